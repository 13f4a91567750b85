"""import-config as one call: read, detect, convert, check against the schema, write the text."""

from __future__ import annotations

from pathlib import Path

import msgspec

from llmrelay.config.decode import decode
from llmrelay.config.schema import ConfigFile
from llmrelay.importing.formats import converter
from llmrelay.importing.report import Report
from llmrelay.importing.sources import FORMATS, ImportSourceError, detect_format, parse_source
from llmrelay.importing.toml_text import document_text


class Imported(msgspec.Struct, frozen=True):
    text: str  # the llmrelay TOML
    report: Report
    format_name: str


def import_config(path: Path, format_name: str = "auto") -> Imported:
    """Raise ImportSourceError when the file cannot be read or does not fit the format."""
    data, syntax = parse_source(path)
    if format_name == "auto":
        format_name = detect_format(data, syntax)
    elif format_name not in FORMATS:
        raise ImportSourceError(f"unknown format {format_name!r}; expected one of {', '.join(FORMATS)}")
    report = Report(format_name)
    converted = converter(format_name)(data, report)
    errors: list[str] = []
    decode(ConfigFile, converted.data, errors)
    if errors:  # a converter's defect, not the operator's: say so rather than write a broken file
        raise ImportSourceError(
            "the imported config does not fit llmrelay's schema (please report this): " + "; ".join(errors)
        )
    header = f"Imported from {path.name} ({format_name}) by `llmrelay import-config`.\nSecrets are kept as written."
    text = document_text(converted.data, converted.comments, header=header)
    return Imported(text, report, format_name)
