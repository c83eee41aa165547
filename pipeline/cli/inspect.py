"""``dip inspect``: what a file carries: size, bit depth, ICC profile, EXIF, XMP, resolution, text,
and the provenance ``dip`` wrote into it."""

from __future__ import annotations

import json

import click

from .options import storage_options_option


@click.command()
@click.argument("file_url", metavar="FILE")
@storage_options_option
def inspect(file_url, storage_options):
    """Print FILE's metadata and provenance (path or URL) as one JSON object."""
    from .. import storage
    from ..core.images import ImageError, decode
    from ..core.metadata import read_provenance
    from .options import parse_json_object

    options = parse_json_object(storage_options, "--storage-options")
    try:
        picture = decode(storage.read_bytes(file_url, options), name=file_url, max_pixels=None)
    except (ImageError, OSError) as error:
        raise click.ClickException(str(error)) from None
    summary = {"file": file_url, "width": picture.width, "height": picture.height, "channels": picture.channels,
               "alpha": picture.alpha is not None, "bit_depth": picture.bit_depth,
               "provenance": read_provenance(picture.metadata.text), **picture.metadata.summary()}
    click.echo(json.dumps(summary, indent=2, default=str))
