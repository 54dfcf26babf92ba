# mini_hypervisor: guests, the three versions, tests and benchmarks.
#
#   make          guests + all three versions; each binary lands in version_X/mini_hypervisor
#   make run-a    version A on the hello guest
#   make run-b    version B: two guests side by side
#   make run-c    version C: the file I/O demo (shared file, copy-on-write, private files)
#   make test     every test: unit, <linux/kvm.h> layout, real guests under /dev/kvm
#   make bench    benchmark table (see README)
#   make clean

CARGO ?= cargo
RELEASE := target/release

.PHONY: all guests build run-a run-b run-c test lint bench clean

all: guests build

guests:
	$(MAKE) -C guest

build:
	$(CARGO) build --release --workspace
	cp $(RELEASE)/mini_hypervisor_a version_a/mini_hypervisor
	cp $(RELEASE)/mini_hypervisor_b version_b/mini_hypervisor
	cp $(RELEASE)/mini_hypervisor_c version_c/mini_hypervisor

run-a: all
	cd version_a && ./mini_hypervisor -m 4 -p 2 -g ../guest/guest.img

run-b: all
	cd version_b && ./mini_hypervisor -m 4 -p 2 -g ../guest/counter.img ../guest/counter.img

# The version C demo: cow.img reads the shared file, writes to it (so gets its own copy) and
# creates a private file; reader.img, beside it, still sees the original.
run-c: all
	@rm -rf version_c/demo_files
	cd version_c && ./mini_hypervisor -q -m 4 -p 2 -g ../guest/cow.img ../guest/reader.img \
		-f ../guest/shared.txt --files-dir demo_files
	@echo
	@echo "Private files the guests left, under version_c/demo_files/:"
	@cd version_c && for f in $$(find demo_files -type f | sort); do echo "--- $$f"; cat "$$f"; done
	@echo "--- guest/shared.txt (the shared original, unchanged)"
	@cat guest/shared.txt

test: guests
	$(CARGO) test --workspace
	$(MAKE) -C guest check
	scripts/check-same-files

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

bench: all
	$(CARGO) run --release -p bench

clean:
	$(CARGO) clean
	$(MAKE) -C guest clean
	rm -f version_a/mini_hypervisor version_b/mini_hypervisor version_c/mini_hypervisor
	rm -rf version_c/demo_files
