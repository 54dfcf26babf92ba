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

run-c: all
	cd version_c && ./mini_hypervisor -m 4 -p 2 -g ../guest/guest.img -f ../guest/shared.txt

test: guests
	$(CARGO) test --workspace
	$(MAKE) -C guest check

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

clean:
	$(CARGO) clean
	$(MAKE) -C guest clean
	rm -f version_a/mini_hypervisor version_b/mini_hypervisor version_c/mini_hypervisor
