# lora.c — LoRA/QLoRA fine-tuning in C.
#   make            build ./lora
#   make test       build and run the whole test suite (installs missing packages first)
#   make demo       the built-in end-to-end fine-tune (no download)
CC       ?= gcc
CXX      ?= g++
# Target architecture: this machine's by default. Cross build for aarch64 (scripts/cross-aarch64.sh):
#   make ARCH=aarch64 SYSROOT=build-arm64/sysroot-arm64 BUILD=build-arm64 ...
# uses aarch64-linux-gnu-gcc/g++ and the arm64 Debian libraries unpacked under SYSROOT.
# (ARCH and SYSROOT are taken from the make command line only, never from the environment.)
HOSTARCH := $(shell uname -m)
ARCH     := $(if $(filter command line,$(origin ARCH)),$(ARCH),$(HOSTARCH))
SYSROOT  := $(if $(filter command line,$(origin SYSROOT)),$(SYSROOT))
MULTIARCH:= $(ARCH)-linux-gnu
ifneq ($(ARCH),$(HOSTARCH))
CROSS    ?= $(MULTIARCH)-
CC       := $(CROSS)gcc
CXX      := $(CROSS)g++
MARCH    ?= $(if $(filter aarch64,$(ARCH)),-march=armv8-a,)
endif
# PORTABLE=1: a binary for any x86-64 (or aarch64) machine; the GEMM kernels for AVX2,
# AVX-512 and AVX-512 BF16 are in it all the same and chosen at run time (lora info).
# Its objects go to build-portable/ (unless BUILD is given), not over the native ones.
ifeq ($(PORTABLE),1)
MARCH    := $(if $(filter x86_64,$(ARCH)),-march=x86-64-v2 -mtune=generic,-march=armv8-a)
BUILD    ?= build-portable
endif
MARCH    ?= -march=native
SYSINC   := $(if $(SYSROOT),-I$(SYSROOT)/usr/include/$(MULTIARCH) -I$(SYSROOT)/usr/include)
SYSLIB   := $(if $(SYSROOT),$(foreach d,$(SYSROOT)/usr/lib/$(MULTIARCH) $(SYSROOT)/lib/$(MULTIARCH),-L$(d) -Wl,-rpath-link,$(d)))
BLASDIR  := /usr/lib/$(MULTIARCH)/openblas-openmp
CFLAGS   := -std=c11 -Wall -Wextra -Werror -O3 $(MARCH) -fopenmp -D_GNU_SOURCE \
            -I. -I$(SYSROOT)/usr/include/$(MULTIARCH)/openblas-openmp $(SYSINC) $(EXTRA_CFLAGS)
CXXFLAGS := -std=c++17 -Wall -Wextra -Werror -O2 -fopenmp -I. $(SYSINC)
BUILD    ?= build
LDLIBS   := -L$(SYSROOT)$(BLASDIR) -Wl,-rpath,$(BLASDIR) $(SYSLIB) -lopenblas -ljson-c -lmicrohttpd -lsentencepiece -lstdc++ -lm -fopenmp

MODULES  := util autograd quant model data optim export infer train
LIBSRC   := $(filter-out train/main.c,$(foreach m,$(MODULES),$(wildcard $(m)/*.c)))
LIBCXX   := $(foreach m,$(MODULES),$(wildcard $(m)/*.cpp))
LIBOBJ   := $(patsubst %.c,$(BUILD)/%.o,$(LIBSRC)) $(patsubst %.cpp,$(BUILD)/%.o,$(LIBCXX))
HEADERS  := $(foreach m,$(MODULES),$(wildcard $(m)/*.h))
TESTSRC  := $(wildcard tests/test_*.c)
TESTBIN  := $(patsubst tests/%.c,$(BUILD)/tests/%,$(TESTSRC))

.PHONY: all test tests demo clean deps bench
all: lora

$(BUILD)/%.o: %.c $(HEADERS)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c $< -o $@

$(BUILD)/%.o: %.cpp $(HEADERS)
	@mkdir -p $(dir $@)
	$(CXX) $(CXXFLAGS) -c $< -o $@

$(BUILD)/liblora.a: $(LIBOBJ)
	@rm -f $@
	ar rcs $@ $^

lora: $(BUILD)/train/main.o $(BUILD)/liblora.a
	$(CC) $(CFLAGS) $^ -o $@ $(LDLIBS)

$(BUILD)/tests/%: tests/%.c $(BUILD)/liblora.a $(HEADERS)
	@mkdir -p $(BUILD)/tests
	$(CC) $(CFLAGS) $< $(BUILD)/liblora.a -o $@ $(LDLIBS)

tests: lora $(TESTBIN)

# `make bench`: lora.c's LoRA/QLoRA step and NF4 decode against PyTorch (bench/bench.sh);
# prints a table, never asserts. BENCH_QUICK=1 runs the small shape only.
$(BUILD)/bench/bench_step: bench/bench_step.c $(BUILD)/liblora.a $(HEADERS)
	@mkdir -p $(BUILD)/bench
	$(CC) $(CFLAGS) $< $(BUILD)/liblora.a -o $@ $(LDLIBS)

bench: lora $(BUILD)/bench/bench_step
	@BUILD=$(BUILD) bash bench/bench.sh

deps:
	@bash scripts/install-deps.sh

test: deps
	@$(MAKE) --no-print-directory tests
	@BUILD=$(BUILD) bash tests/run.sh

demo: deps
	@$(MAKE) --no-print-directory lora
	@bash scripts/demo.sh

clean:
	rm -rf build lora
