"""The package version, in one place (the CLI, plan.json and SLURM scripts print it)."""

__version__ = "0.1.0"
