"""A pytest plugin (loaded with -p in pyproject.toml): Hypothesis settings for the whole suite."""

from hypothesis import settings

# Speed goals live in bench/; a busy CI machine must not turn a slow example into a failure.
settings.register_profile("postgressor", deadline=None)
settings.load_profile("postgressor")
