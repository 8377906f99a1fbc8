# Aliases for ./dev, which does the set-up itself (see README).
.PHONY: demo test test-fast bench stack
demo:
	./dev demo
test:
	./dev test
test-fast:
	./dev test -m "not slow"
bench:
	./dev bench
stack:
	./dev stack
