"""Looking inside trained models: ``microzero analyze``."""
