"""Regions, latency and cost: plain functions over a dated catalogue (see catalogue.toml)."""
