"""`llmrelay import-config`: another proxy's config file turned into an equivalent llmrelay TOML.

`sources` reads the file (YAML through PyYAML's safe loader, TOML through tomllib) and tells its
format; one module per format in `formats/` maps the source's keys onto llmrelay's, writing every
decision into a `Report`; `toml_text` writes the result; `command` ties these together for the CLI.
Secrets are carried over as they were written (`${ENV}`, `$(command)`, literals): nothing is resolved.
"""
