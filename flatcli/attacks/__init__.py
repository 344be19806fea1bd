"""Input-space attacks: threat models, PGD and APGD (on `flatcli.ascent`), presets."""
