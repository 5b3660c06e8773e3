#!/bin/sh
# ensure-tool.sh "CMD[,CMD…]" DEBIAN_PACKAGE required|optional "WHY"
# Make sure the commands are on PATH: install the Debian package with apt-get when we can
# (Debian/Ubuntu, running as root); otherwise say how to install it, and fail if it is required.
package="$2"; need="$3"; why="$4"
old_ifs=$IFS; IFS=','; set -f; cmds=""
for c in $1; do cmds="$cmds $c"; done  # split on commas with the shell alone (no tr, no sed)
IFS=$old_ifs; set +f
missing=""
for c in $cmds; do command -v "$c" >/dev/null 2>&1 || missing="$missing $c"; done
[ -z "$missing" ] && exit 0
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "$package not found: installing it with apt-get ($why)" >&2
    if apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$package" >/dev/null; then
        ok=yes
        for c in $cmds; do command -v "$c" >/dev/null 2>&1 || ok=no; done
        [ "$ok" = yes ] && exit 0
    fi
    echo "Error: apt-get could not install $package; install it by hand and retry" >&2
    exit 1
fi
{
    echo "$( [ "$need" = required ] && echo Error || echo Note ): $package is not installed ($why)."
    echo "  Debian/Ubuntu:  sudo apt-get install $package"
    [ "$package" = ffmpeg ] && echo "  Fedora:         sudo dnf install ffmpeg" && echo "  macOS:          brew install ffmpeg"
    echo "Then run the make command again."
} >&2
[ "$need" = required ] && exit 1
exit 0
