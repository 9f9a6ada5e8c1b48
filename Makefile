# lora.c — LoRA/QLoRA fine-tuning in C.
#   make            build ./lora
#   make test       build and run the whole test suite (installs missing packages first)
#   make demo       the built-in end-to-end fine-tune (no download)
CC       ?= gcc
CXX      ?= g++
BLASDIR  := /usr/lib/x86_64-linux-gnu/openblas-openmp
CFLAGS   := -std=c11 -Wall -Wextra -Werror -O3 -march=native -fopenmp -D_GNU_SOURCE \
            -I. -I/usr/include/x86_64-linux-gnu/openblas-openmp $(EXTRA_CFLAGS)
CXXFLAGS := -std=c++17 -Wall -Wextra -Werror -O2 -fopenmp -I.
BUILD    ?= build
LDLIBS   := -L$(BLASDIR) -Wl,-rpath,$(BLASDIR) -lopenblas -ljson-c -lmicrohttpd -lsentencepiece -lstdc++ -lm -fopenmp

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

bench: $(BUILD)/bench/bench_step
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
