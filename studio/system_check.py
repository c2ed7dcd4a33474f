"""Before Qt starts: the system libraries Qt's xcb platform plugin needs on Linux.

Without them Qt aborts with "no Qt platform plugin could be initialized", which names none of
them. ``missing_xcb_libraries`` looks each one up the way the dynamic loader would (ldconfig's
cache, through ``ctypes.util.find_library``) and ``xcb_advice`` names the packages to install.
"""

from __future__ import annotations

import ctypes.util
import os
import sys

# library (as find_library names it) -> (Debian/Ubuntu package, Fedora package)
XCB_LIBRARIES = {
    "xcb-cursor": ("libxcb-cursor0", "xcb-util-cursor"),
    "xcb-icccm": ("libxcb-icccm4", "xcb-util-wm"),
    "xcb-keysyms": ("libxcb-keysyms1", "xcb-util-keysyms"),
    "xkbcommon-x11": ("libxkbcommon-x11-0", "libxkbcommon-x11"),
}


def uses_xcb() -> bool:
    """Whether Qt will pick its xcb plugin: Linux, and no other platform asked for (offscreen, wayland)."""
    if not sys.platform.startswith("linux"):
        return False
    platform = os.environ.get("QT_QPA_PLATFORM", "")
    if platform:
        return platform.startswith("xcb")
    return not os.environ.get("WAYLAND_DISPLAY")


def missing_xcb_libraries() -> list[str]:
    return [lib for lib in XCB_LIBRARIES if ctypes.util.find_library(lib) is None]


def xcb_advice(missing: list[str]) -> str:
    debian = " ".join(XCB_LIBRARIES[m][0] for m in missing)
    fedora = " ".join(XCB_LIBRARIES[m][1] for m in missing)
    return (f"Signal Studio cannot open a window: Qt's X11 (xcb) plugin needs system libraries that are not installed "
            f"({', '.join('lib' + m for m in missing)}).\n"
            f"  Debian/Ubuntu: sudo apt install {debian}\n"
            f"  Fedora:        sudo dnf install {fedora}\n"
            "Then start it again. (QT_QPA_PLATFORM=offscreen runs it without a display, e.g. for screenshots.)")
