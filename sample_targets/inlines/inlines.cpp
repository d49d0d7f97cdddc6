// inlines-cpp N: C++ code that g++ -O2 inlines: a header's member functions, a function
// template used at two types, and libstdc++'s own inline code. See EXPECTED.md.
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "counter.hpp"

volatile long observed;

static void report_overflow(long total)  // inlined only into a branch never taken
{
    observed = total;
    std::fprintf(stderr, "inlines-cpp: overflow at %ld\n", total);
}

int main(int argc, char **argv)
{
    int n = argc > 1 ? std::atoi(argv[1]) : 10;
    std::vector<long> values;
    for (int i = 0; i < n; i++)
        values.push_back(square(static_cast<long>(i)));
    Counter counter;
    for (long v : values)
        counter.add(v);
    if (counter.get() < 0)
        report_overflow(counter.get());
    double d = square(1.5);
    std::printf("%ld %.2f\n", counter.get(), d);
    return 0;
}
