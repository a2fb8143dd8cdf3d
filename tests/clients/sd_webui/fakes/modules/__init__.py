"""Fake `modules` package of stable-diffusion-webui (tests only)."""
