module github.com/lazylocal/buildkit/hack/docscheck

go 1.26.8
