module jsonserver

go 1.19
