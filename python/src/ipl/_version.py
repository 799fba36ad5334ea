# SPDX-License-Identifier: MIT
# The package version: the libipl release it belongs to (IPL_VERSION_STRING).
__version__ = "0.2.0"
