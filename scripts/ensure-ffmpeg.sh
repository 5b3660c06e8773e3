#!/bin/sh
# Make sure ffmpeg and ffprobe are on PATH: install them with apt-get when we can
# (Debian/Ubuntu, running as root), otherwise say clearly how to install them.
if command -v ffmpeg >/dev/null 2>&1 && command -v ffprobe >/dev/null 2>&1; then
    exit 0
fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "ffmpeg not found: installing it with apt-get" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq ffmpeg >/dev/null \
        && command -v ffprobe >/dev/null 2>&1 && exit 0
    echo "Error: apt-get could not install ffmpeg; install it by hand and retry" >&2
    exit 1
fi
{
    echo "Error: ffmpeg and ffprobe are required but were not found on PATH."
    echo "  Debian/Ubuntu:  sudo apt-get install ffmpeg"
    echo "  Fedora:         sudo dnf install ffmpeg"
    echo "  macOS:          brew install ffmpeg"
    echo "Then run the make command again."
} >&2
exit 1
