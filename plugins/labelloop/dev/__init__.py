"""Development and test tooling, not part of the pipelines: the embedded and production-shaped
stacks, the demo, simulated annotators and the pre-label backend launcher."""
