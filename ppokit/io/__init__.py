"""Everything that touches the disk: run directories, checkpoints and metric sinks."""
