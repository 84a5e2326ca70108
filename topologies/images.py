"""A distributed image pipeline with Pillow: thumbnails and statistics made by parallel workers.

    pip install pillow          # or: pip install '.[examples]'
    flowgraph run topologies/images.py
    flowgraph run topologies/images.py --set images=~/Pictures --set thumbnails=thumbs --set db=pictures.db

``files`` (``nodes.files.ReadFiles``) reads every file under ``--set
images=DIR``. Without it, it first draws 40 test images into ``./images-in/``
(gradients, rings and boxes of varied sizes; PNG and JPEG; RGB, RGBA,
grayscale and palette; the same every time), so the example runs offline
with no pictures bundled. The files travel as bytes, so workers on other
hosts need no shared disk. Three ``thumbnail`` replicas share the images (a
``shuffle()`` edge deals them in turn, in batches of about 256 KiB, so small
images go a few at a time) and make of each a thumbnail of at
most 128x128 and its statistics: format, width, height, mode, mean
brightness, mean colour, and the replica that did it (a file that is not an
image gets a row with ``error`` set). Every result goes to both sinks:
``save`` writes the thumbnails, with the image's file name, to
``./thumbnails/`` (``--set thumbnails=DIR``), and ``store`` the statistics to
table ``images`` of ``./images.db`` (``--set db=FILE``; the table is
replaced every run). Each prints where.
"""

from __future__ import annotations

import io
import random
import shutil
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageOps, ImageStat

from flowgraph import Topology, context
from nodes.files import ReadFiles
from nodes.sqlite import SQLiteStore, count_rows

THUMBNAIL_SIZE = (128, 128)
TEST_IMAGES = 40
KINDS = [("JPEG", "RGB"), ("PNG", "RGB"), ("PNG", "RGBA"), ("JPEG", "L"), ("PNG", "P")]
"""(format, mode) of test image 0, 1, 2...: each kind in turn."""
COLUMNS = ["path", "name", "bytes", "format", "width", "height", "mode", "brightness", "mean_colour",
           "thumbnail", "replica", "error"]
"""The columns of table ``images``; a file that is not an image has only path, name, bytes, replica and error."""


def draw_test_image(number: int) -> Image.Image:
    """Test image ``number``: a gradient in each colour channel and a few shapes, drawn from seed ``number``."""
    rng = random.Random(number)
    size = (rng.randrange(64, 800), rng.randrange(48, 600))
    gradients = [Image.linear_gradient("L"), Image.radial_gradient("L")]
    channels = [rng.choice(gradients).rotate(rng.choice([0, 90, 180, 270])).resize(size) for _ in "RGB"]
    image = Image.merge("RGB", channels)
    draw = ImageDraw.Draw(image)
    for _ in range(rng.randint(2, 6)):
        x, y = rng.randrange(size[0]), rng.randrange(size[1])
        box = (x, y, x + rng.randrange(8, size[0] // 2 + 9), y + rng.randrange(8, size[1] // 2 + 9))
        colour = tuple(rng.randrange(256) for _ in "RGB")
        if rng.random() < 0.5:
            draw.ellipse(box, outline=colour, width=rng.randint(2, 12))
        else:
            draw.rectangle(box, fill=colour)
    _, mode = KINDS[number % len(KINDS)]
    if mode == "RGBA":
        image.putalpha(ImageOps.invert(Image.radial_gradient("L")).resize(size))  # opaque centre
    return image.convert(mode)


def draw_test_images(directory: Path) -> None:
    """Draw the test images into ``directory``, unless it exists (a run that stops halfway leaves none)."""
    if directory.exists():
        return
    drawing = directory.with_name(directory.name + ".part")
    shutil.rmtree(drawing, ignore_errors=True)
    drawing.mkdir(parents=True)
    for number in range(TEST_IMAGES):
        file_format, _ = KINDS[number % len(KINDS)]
        suffix = ".jpg" if file_format == "JPEG" else ".png"
        draw_test_image(number).save(drawing / f"test-{number:02}{suffix}", format=file_format)
    drawing.rename(directory)


class ReadImages(ReadFiles):
    """The files under ``--set images=DIR``; without it, the test images, drawn first into ./images-in/."""

    def setup(self) -> None:
        if "images" in context().params:
            self.paths = [context().params["images"]]
        else:
            draw_test_images(Path(self.paths[0]))
        super().setup()


def thumbnail_and_statistics(file: dict[str, Any]) -> dict[str, Any]:
    """The statistics of an image file from ``ReadFiles``, with its thumbnail as ``thumbnail_bytes``."""
    row: dict[str, Any] = {"path": file["path"], "name": file["name"], "bytes": file["size"],
                           "replica": context().replica}
    try:
        opened = Image.open(io.BytesIO(file["data"]))
        image = ImageOps.exif_transpose(opened)  # turn photos the way the camera was held
    except OSError as error:  # not an image, or a truncated one
        return {**row, "error": f"{type(error).__name__}: {error}"}
    red, green, blue = (round(mean) for mean in ImageStat.Stat(image.convert("RGB")).mean)
    row.update(format=opened.format, width=image.width, height=image.height, mode=image.mode,
               brightness=round(ImageStat.Stat(image.convert("L")).mean[0], 2),
               mean_colour=f"#{red:02x}{green:02x}{blue:02x}")
    small = image.copy()
    small.thumbnail(THUMBNAIL_SIZE)  # keeps the aspect ratio; never enlarges
    if opened.format in ("JPEG", "PNG"):  # the thumbnail in the image's format, under its name
        row["thumbnail"], file_format = file["name"], opened.format
    else:
        row["thumbnail"], file_format = file["name"] + ".png", "PNG"
        if small.mode not in ("1", "L", "LA", "P", "RGB", "RGBA"):  # e.g. CMYK, which PNG cannot hold
            small = small.convert("RGBA")
    encoded = io.BytesIO()
    small.save(encoded, format=file_format)
    return {**row, "thumbnail_bytes": encoded.getvalue()}


class SaveThumbnails:
    """Writes each thumbnail into ``--set thumbnails=DIR`` (default ./thumbnails/); says where at the end."""

    def setup(self) -> None:
        self.directory = Path(context().params.get("thumbnails", "thumbnails")).expanduser().resolve()
        self.directory.mkdir(parents=True, exist_ok=True)
        self.saved = 0

    def process(self, image: dict[str, Any]) -> None:
        if "thumbnail_bytes" in image:
            (self.directory / image["thumbnail"]).write_bytes(image["thumbnail_bytes"])
            self.saved += 1

    def finish(self) -> None:
        print(f"saved {self.saved} thumbnails in {self.directory}")


class StoreStatistics(SQLiteStore):
    """The statistics into table ``images`` of ``--set db=FILE`` (default ./images.db), a new table each run."""

    def setup(self) -> None:
        self.path = context().params.get("db", "images.db")
        super().setup()

    def finish(self) -> None:
        super().finish()
        print(f"stored the statistics of {count_rows(str(self.path), self.table)} files in table "
              f"{self.table!r} of {self.path}")


topo = Topology("images")
files = topo.source(ReadImages("images-in"), name="files")
thumbnail = topo.node(thumbnail_and_statistics, inputs=files, parallelism=3, name="thumbnail")  # shuffle
topo.sink(SaveThumbnails(), inputs=thumbnail, name="save")
topo.sink(StoreStatistics(None, "images", columns=COLUMNS, replace=True), inputs=thumbnail, name="store")
