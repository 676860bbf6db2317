# Convenience targets; the README's two commands are scripts/demo.sh and scripts/test.sh.
.PHONY: demo test build release format clean

demo:
	bash scripts/demo.sh

test:
	bash scripts/test.sh

build:
	swift build

release:
	swift build -c release

format:
	swift format -i -r Sources Tests Package.swift

clean:
	rm -rf .build data
