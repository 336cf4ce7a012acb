module rpcd-benchmarks

go 1.19
