# SPDX-License-Identifier: MIT
"""Loading libipl: the right library, and a clear error without one."""

import os
import re
import subprocess
import sys

import ipl


def mapped_libipl():
    """The real path of the libipl this process has loaded."""
    with open("/proc/self/maps") as maps:
        paths = {line.split()[-1] for line in maps if re.search(r"/libipl\.so[.\d]*$", line)}
    assert len(paths) == 1, paths
    return os.path.realpath(paths.pop())


# Catches: the tests silently running against another libipl than the one
# under test (a system copy, a stale build): CI names the folder it
# installed into (IPL_TEST_LIBRARY_DIR), meson's ffi suite the library
# (IPL_LIBRARY).
def test_loads_the_library_under_test():
    loaded = mapped_libipl()
    expected_dir = os.environ.get("IPL_TEST_LIBRARY_DIR")
    if expected_dir:
        assert os.path.dirname(loaded) == os.path.realpath(expected_dir)
        assert "IPL_LIBRARY" not in os.environ, "the installed case must load libipl.so.1 by itself"
        assert ipl.library_path() == "libipl.so.1"
    else:
        assert loaded == os.path.realpath(os.environ["IPL_LIBRARY"])
    assert re.fullmatch(r"\d+\.\d+\.\d+", ipl.library_version())
    assert re.fullmatch(r"\d+\.\d+\.\d+", ipl.__version__)


# Catches: a missing library reported as a bare ctypes OSError that does not
# say what to install, or IPL_LIBRARY silently ignored.
def test_a_missing_library_says_what_to_install(tmp_path):
    env = dict(os.environ, IPL_LIBRARY=str(tmp_path / "libipl.so.1"))
    result = subprocess.run([sys.executable, "-c", "import ipl"], env=env,
                            capture_output=True, text=True, timeout=30)
    assert result.returncode != 0
    assert "LibraryNotFoundError" in result.stderr
    assert "meson install" in result.stderr and "IPL_LIBRARY" in result.stderr
    assert str(tmp_path / "libipl.so.1") in result.stderr
