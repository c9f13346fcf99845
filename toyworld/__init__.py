"""The embedded default's synthetic world (shared/TOYWORLD.md): renderer, scenarios, test-video
makers, grading, the trained tower and its oracle, the shipped weights and their training.
Generic code never imports this package: the composition root plugs it in."""

from pathlib import Path

# The shipped weights (tower, LLM adapter, manifest, model card): inside the package, never fetched.
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
