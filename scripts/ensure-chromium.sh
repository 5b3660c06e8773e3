#!/bin/sh
# The HTML report is tested in a real headless browser: Debian's chromium. Install it with
# apt-get when missing and we run as root; otherwise say how (the browser test fails on CI without it).
if command -v chromium >/dev/null 2>&1; then
    exit 0
fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "chromium not found: installing it with apt-get (for the HTML report test)" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null \
        && command -v chromium >/dev/null 2>&1 && exit 0
    echo "Error: apt-get could not install chromium" >&2
    exit 1
fi
echo "Note: chromium is not installed; the HTML report browser test will be skipped (sudo apt-get install chromium)" >&2
exit 0
