// A header's inline functions and a class template, as C++ code is written: every unit
// that includes this may inline them.
#pragma once

extern volatile long observed;

struct Counter {
    long total = 0;
    void add(long x) { total += x; observed = total; }  // inline: defined in the class
    long get() const { return total; }
};

template <typename T>
inline T square(T x)
{
    observed = static_cast<long>(x);
    return x * x;
}
