"""Every option, once: the fields that carry their command-line option (fields), the torch-free
registries of named choices (registries), and one frozen dataclass per command with every
default, help text and check (commands; `flatcli train`'s TrainConfig in
flatcli.training.defaults). Torch-free, so --help never imports torch. The package imports none
of its modules itself: training's defaults use the fields before the commands exist."""
