"""A faithful local emulator of fal's queue, storage and platform APIs for the Luma Ray endpoints.

Real HTTP on one port for every fal host's paths, real output videos made with ffmpeg, billing
from the same price table as the runner, reproducible fault injection. A separate app: it
imports only catalog, pricing and domain from batch_runner.
"""
