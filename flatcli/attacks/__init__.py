"""Input-space attacks: threat models, the shared ascent loop, PGD, APGD, presets."""
