"""The digest's chart: messages per day, both directions, as a small PNG made with Pillow."""

from __future__ import annotations

import io
from collections.abc import Sequence

from PIL import Image, ImageDraw, ImageFont

WIDTH, HEIGHT = 640, 280
MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP, MARGIN_BOTTOM = 70, 20, 40, 50
COLOURS = {"originating": (196, 69, 54), "returning": (47, 111, 170)}
LABELS = {"originating": "from your networks", "returning": "to your networks"}
INK = (40, 40, 40)
GRID = (220, 220, 220)


def messages_per_day_png(days: Sequence[str], series: dict[str, Sequence[int]]) -> bytes:
    """Grouped bars: one group per day, one bar per direction in ``series``."""
    image = Image.new("RGB", (WIDTH, HEIGHT), "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=12)
    plot_w = WIDTH - MARGIN_LEFT - MARGIN_RIGHT
    plot_h = HEIGHT - MARGIN_TOP - MARGIN_BOTTOM
    top = max((max(values, default=0) for values in series.values()), default=0)
    scale_max = _nice_ceiling(top)
    for step in range(5):
        value = scale_max * step // 4
        y = MARGIN_TOP + plot_h - plot_h * step // 4
        draw.line([(MARGIN_LEFT, y), (WIDTH - MARGIN_RIGHT, y)], fill=GRID)
        draw.text((MARGIN_LEFT - 6, y), f"{value:,}", fill=INK, font=font, anchor="rm")
    group_w = plot_w / max(len(days), 1)
    bar_w = group_w * 0.8 / max(len(series), 1)
    for index, day in enumerate(days):
        x0 = MARGIN_LEFT + index * group_w + group_w * 0.1
        for position, (direction, values) in enumerate(series.items()):
            height = plot_h * values[index] / scale_max if scale_max else 0
            left = x0 + position * bar_w
            bottom = MARGIN_TOP + plot_h
            if height:
                draw.rectangle(
                    [left, bottom - height, left + bar_w - 2, bottom],
                    fill=COLOURS.get(direction, INK),
                )
        label_x = MARGIN_LEFT + index * group_w + group_w / 2
        draw.text((label_x, HEIGHT - MARGIN_BOTTOM + 8), day[5:], fill=INK, font=font, anchor="mt")
    draw.text((MARGIN_LEFT, 12), "Messages per day (UTC)", fill=INK, font=font)
    legend_x = WIDTH - MARGIN_RIGHT
    for direction in reversed(list(series)):
        text = LABELS.get(direction, direction)
        width = draw.textlength(text, font=font)
        legend_x -= int(width) + 26
        draw.rectangle([legend_x, 12, legend_x + 12, 24], fill=COLOURS.get(direction, INK))
        draw.text((legend_x + 16, 12), text, fill=INK, font=font)
    draw.line(
        [(MARGIN_LEFT, MARGIN_TOP + plot_h), (WIDTH - MARGIN_RIGHT, MARGIN_TOP + plot_h)], fill=INK
    )
    output = io.BytesIO()
    image.save(output, format="PNG", optimize=True)
    return output.getvalue()


def _nice_ceiling(value: int) -> int:
    """The smallest 4 x (1, 2 or 5) x 10^k >= value: four gridlines at round numbers."""
    magnitude = 1
    while True:
        for factor in (1, 2, 5):
            if 4 * factor * magnitude >= value:
                return 4 * factor * magnitude
        magnitude *= 10
