module jsonclient

go 1.19
