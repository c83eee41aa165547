"""``dip inspect``: what a file carries: size, bit depth, ICC profile, EXIF, XMP, resolution, text,
and the provenance ``dip`` wrote into it."""

from __future__ import annotations

import json

import click

from .options import storage_options_option


@click.command()
@click.argument("file_url", metavar="FILE")
@click.option("--page", type=click.IntRange(0), help="The page of a multi-page file to describe (0-based); such "
              "files are refused without it.")
@storage_options_option
def inspect(file_url, page, storage_options):
    """Print FILE's metadata and provenance (path or URL) as one JSON object."""
    from .. import storage
    from ..core.formats import DEFAULT_MAX_PIXELS, max_input_bytes
    from ..core.images import ImageError, decode
    from ..core.metadata import read_provenance
    from .options import parse_json_object

    options = parse_json_object(storage_options, "--storage-options")
    try:
        picture = decode(storage.read_bytes(file_url, options, max_bytes=max_input_bytes(DEFAULT_MAX_PIXELS)),
                         name=file_url, max_pixels=None, page=page)
    except (ImageError, ValueError, OSError) as error:
        raise click.ClickException(str(error)) from None
    summary = {"file": file_url, "width": picture.width, "height": picture.height, "channels": picture.channels,
               "alpha": picture.alpha is not None, "bit_depth": picture.bit_depth,
               "provenance": read_provenance(picture.metadata.text), **picture.metadata.summary()}
    click.echo(json.dumps(summary, indent=2, default=str))
