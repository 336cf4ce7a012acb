module jsonrpcpeer

go 1.19
