# NanoInfer build. Plain make: objects under build/, header deps via -MMD -MP.
#   make              build/nanoinfer (CUDA backend when nvcc is found, USE_CUDA=auto)
#   make USE_CUDA=0   CPU only
#   make test         deps + model + check-deps + every test (the one test command)
#   make check-deps   every #include points down the layer order (docs/design.md)
#   make asan         build + tests under AddressSanitizer/UBSan (build/asan/)
#   make run          deps + model + build, then `nanoinfer serve` on the default model
#   make bench        offline benchmark on the default model
#   make format       clang-format every C/C++/CUDA source
#   make fuzz         libFuzzer targets (test/fuzz), FUZZ_SECONDS each (default 30)

USE_CUDA ?= auto
BUILD    ?= build
MODEL    ?= models/SmolLM2-135M-Instruct.Q4_1.gguf
NVCC     ?= nvcc
CUDA_ARCH ?= -arch=sm_90
CUDA_HOME ?= $(patsubst %/bin/nvcc,%,$(shell command -v $(NVCC) 2>/dev/null))

CC      ?= cc
CXX     ?= c++
OPT     ?= -O2 -march=x86-64-v3 -mtune=native
# Includes across folders are root-relative ("engine/util/util.h"); scripts/check-deps.py
# keeps them pointing down the layer order of docs/design.md.
CFLAGS  += -std=c11 $(OPT) -g -Wall -Wextra -Werror -fopenmp -MMD -MP -D_GNU_SOURCE -I.
CXXFLAGS += -std=c++17 $(OPT) -g -Wall -Wextra -Werror -MMD -MP -I.
LDLIBS  += -lsentencepiece -lpcre2-8 -ljansson -lopenblas -lgomp -lpthread -lm -lstdc++ -lmicrohttpd -luv

ifeq ($(USE_CUDA),auto)
  ifneq ($(CUDA_HOME),)
    USE_CUDA := 1
  else
    USE_CUDA := 0
  endif
endif

LIB_C   := $(sort $(shell find engine tokenizer -name '*.c'))
LIB_CXX := $(wildcard tokenizer/*.cc)
LIB_CU  :=
ifeq ($(USE_CUDA),1)
  LIB_CU := $(wildcard cuda/*.cu)
  CFLAGS += -DNI_USE_CUDA=1 -I$(CUDA_HOME)/include
  LDLIBS += -L$(CUDA_HOME)/lib64 -Wl,-rpath,$(CUDA_HOME)/lib64 -lcublas -lcudart
endif
NVCCFLAGS ?= -O2 -g $(CUDA_ARCH) -Xcompiler -Wall,-Wextra,-Werror,-fPIC -MMD -MP -std=c++17 -I.

LIB_OBJ := $(LIB_C:%.c=$(BUILD)/%.o) $(LIB_CXX:%.cc=$(BUILD)/%.o) $(LIB_CU:%.cu=$(BUILD)/%.o)
SRV_OBJ := $(patsubst %.c,$(BUILD)/%.o,$(wildcard server/http/*.c))
CLI_OBJ := $(patsubst %.c,$(BUILD)/%.o,$(wildcard server/cli/*.c))
# test/test_util.c is the helper library every test links, not a test program.
TESTS   := $(patsubst test/%.c,$(BUILD)/test/%,$(filter-out test/test_util.c,$(wildcard test/test_*.c)))
TEST_UTIL := $(BUILD)/test/test_util.o

.PHONY: all test test-seeds asan run bench format deps model clean check-tests check-deps
all: $(BUILD)/nanoinfer

$(BUILD)/libnanoinfer.a: $(LIB_OBJ)
	@mkdir -p $(@D)
	ar rcs $@ $^

# The HTTP server is a library of its own: the binary and the server tests link it.
$(BUILD)/libnanoinfer_srv.a: $(SRV_OBJ)
	@mkdir -p $(@D)
	ar rcs $@ $^

$(BUILD)/nanoinfer: $(CLI_OBJ) $(BUILD)/libnanoinfer_srv.a $(BUILD)/libnanoinfer.a
	$(CC) $(CFLAGS) -o $@ $^ $(LDFLAGS) $(LDLIBS)

$(BUILD)/%.o: %.c
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) -c -o $@ $<

$(BUILD)/%.o: %.cc
	@mkdir -p $(@D)
	$(CXX) $(CXXFLAGS) -c -o $@ $<

$(BUILD)/%.o: %.cu
	@mkdir -p $(@D)
	$(NVCC) $(NVCCFLAGS) -c -o $@ $<

# Named here so make keeps it (a pattern-only prerequisite would be deleted as
# intermediate); compiled by the %.o rule above.
$(TEST_UTIL): test/test_util.c

$(BUILD)/test/%: test/%.c $(TEST_UTIL) $(BUILD)/libnanoinfer_srv.a $(BUILD)/libnanoinfer.a
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) -o $@ $< $(TEST_UTIL) $(BUILD)/libnanoinfer_srv.a $(BUILD)/libnanoinfer.a $(LDFLAGS) $(LDLIBS) -lcmocka

# Tests run from the repository root; NI_MODEL points at the default model.
check-tests: $(TESTS) $(BUILD)/nanoinfer
	@NI_MODEL=$(MODEL) BUILD=$(BUILD) bash test/run-tests.sh $(TESTS)

# The layering rule of docs/design.md: the checker's self-test (it must catch a
# reversed include), then the tree.
check-deps:
	@python3 scripts/check-deps.py --self-test >/dev/null
	@python3 scripts/check-deps.py

# deps, then model, then tests: in this order even under make -j.
test:
	@$(MAKE) --no-print-directory deps
	@$(MAKE) --no-print-directory check-deps
	@$(MAKE) --no-print-directory model
	@$(MAKE) --no-print-directory check-tests

# Every randomised test over SEEDS consecutive seeds (default 50); not part of
# `make test` (minutes); CUDA programs need the GPU machine.
SEEDS ?= 50
test-seeds: $(TESTS)
	@NI_MODEL=$(MODEL) BUILD=$(BUILD) bash test/test-seeds.sh $(SEEDS)

asan:
	@$(MAKE) --no-print-directory check-tests BUILD=build/asan USE_CUDA=0 \
	  OPT="-O1 -march=x86-64-v3 -fsanitize=address,undefined -fno-omit-frame-pointer" \
	  LDFLAGS="-fsanitize=address,undefined"

run:
	@$(MAKE) --no-print-directory deps
	@$(MAKE) --no-print-directory model $(BUILD)/nanoinfer
	$(BUILD)/nanoinfer serve --model $(MODEL) --host 127.0.0.1 --port 8000

bench: model $(BUILD)/nanoinfer
	$(BUILD)/nanoinfer bench --model $(MODEL)

deps:
	@bash scripts/install-deps.sh

model: $(MODEL)
$(MODEL):
	@bash scripts/fetch-model.sh $(MODEL)

format:
	clang-format -i $(shell find engine tokenizer server cuda test -name '*.[ch]' -o -name '*.cc' -o -name '*.cu')

clean:
	rm -rf $(BUILD)

-include $(shell find $(BUILD) -name '*.d' 2>/dev/null)

# ---- fuzzing (clang libFuzzer + ASan/UBSan): make fuzz [FUZZ_SECONDS=30] ----
# Targets test/fuzz/fuzz_*.c, seed corpora test/fuzz/corpus/<target>/ (copied
# to build/fuzz/corpus/<target>/, which keeps what the runs find); a crash
# leaves build/fuzz/crash-* and fails the target.
FUZZ_SECONDS ?= 30
FUZZ_CC   ?= clang
FUZZ_FLAGS := -O1 -g -march=x86-64-v3 -fsanitize=fuzzer-no-link,address,undefined \
              -Wall -Wextra -Werror -Wno-pass-failed -MMD -MP -I.
FUZZ_BIN  := $(patsubst test/fuzz/%.c,build/fuzz/bin/%,$(wildcard test/fuzz/fuzz_*.c))
.PHONY: fuzz fuzz-build
fuzz-build:
	@$(MAKE) --no-print-directory USE_CUDA=0 BUILD=build/fuzz CC=$(FUZZ_CC) CXX=$(FUZZ_CC)++ \
	  CFLAGS="-std=c11 $(FUZZ_FLAGS) -fopenmp-simd -D_GNU_SOURCE" \
	  CXXFLAGS="-std=c++17 $(FUZZ_FLAGS) -fno-sanitize=vptr" build/fuzz/libnanoinfer.a \
	  build/fuzz/libnanoinfer_srv.a
	@mkdir -p build/fuzz/bin
	@for t in $(FUZZ_BIN); do n=$${t##*/}; \
	  $(FUZZ_CC) -std=c11 $(FUZZ_FLAGS) -fsanitize=fuzzer -D_GNU_SOURCE -o $$t test/fuzz/$$n.c \
	    build/fuzz/libnanoinfer_srv.a build/fuzz/libnanoinfer.a \
	    -lsentencepiece -lpcre2-8 -ljansson -lopenblas -lpthread -lm -lstdc++ -lmicrohttpd -luv \
	    || exit 1; done
fuzz: fuzz-build
	@for t in $(FUZZ_BIN); do n=$${t##*/}; c=build/fuzz/corpus/$$n; mkdir -p $$c; \
	  [ -d test/fuzz/corpus/$$n ] && cp -n test/fuzz/corpus/$$n/* $$c/ 2>/dev/null; \
	  echo "== $$n ($(FUZZ_SECONDS) s)"; \
	  ASAN_OPTIONS=allocator_may_return_null=1:detect_leaks=1 $$t -max_total_time=$(FUZZ_SECONDS) \
	    -rss_limit_mb=2048 -max_len=65536 -print_final_stats=1 -artifact_prefix=build/fuzz/ $$c \
	    2>build/fuzz/$$n.log || { tail -40 build/fuzz/$$n.log; exit 1; }; \
	  grep -E '^(stat::number_of_executed_units|stat::peak_rss_mb)' build/fuzz/$$n.log; done
