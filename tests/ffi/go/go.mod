module libipl.test/ipl

go 1.19
