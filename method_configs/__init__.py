"""Method presets of mclnf-city, registered with nerfstudio through entry points."""
