// SPDX-License-Identifier: MIT
module github.com/libipl/libipl/go

go 1.19
