// inventory: a small C++ program for demangling, aliases and virtual dispatch.
//
//   inventory list            -> builds items, prints values through virtual calls
//   inventory total           -> sums quantities with a template
//   inventory bad             -> throws and catches an exception
// See EXPECTED.md.
#include <cstdio>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace inv {

class Item {
  public:
    Item(std::string name, int quantity) : name_(std::move(name)), quantity_(quantity)
    {
        if (quantity_ < 0)
            throw std::invalid_argument("negative quantity");
    }
    virtual ~Item() = default;
    virtual double value() const { return quantity_ * 1.0; }
    const std::string &name() const { return name_; }
    int quantity() const { return quantity_; }

  private:
    std::string name_;
    int quantity_;
};

class Tool : public Item {
  public:
    Tool(std::string name, int quantity, double price) : Item(std::move(name), quantity), price_(price) {}
    double value() const override { return quantity() * price_; }

  private:
    double price_;
};

class Gadget : public Item { // never constructed by any command
  public:
    using Item::Item;
    double value() const override; // defined out of line, so it and the vtable exist
};

double Gadget::value() const { return quantity() * 99.0; }

template <typename T> T total(const std::vector<T> &values)
{
    T sum{};
    for (const T &v : values)
        sum += v;
    return sum;
}

std::vector<std::unique_ptr<Item>> make_items()
{
    std::vector<std::unique_ptr<Item>> items;
    items.push_back(std::make_unique<Item>("bolt", 10));
    items.push_back(std::make_unique<Tool>("hammer", 2, 12.5));
    return items;
}

} // namespace inv

static int cmd_list()
{
    for (const auto &item : inv::make_items())
        std::printf("%s %.2f\n", item->name().c_str(), item->value());
    return 0;
}

static int cmd_total()
{
    std::vector<int> quantities{1, 2, 3};
    std::vector<double> prices{1.5, 2.5};
    std::printf("%d %.1f\n", inv::total(quantities), inv::total(prices));
    return 0;
}

static int cmd_bad()
{
    try {
        inv::Item broken("broken", -1);
        std::printf("unreachable %s\n", broken.name().c_str());
    } catch (const std::invalid_argument &e) {
        std::printf("caught: %s\n", e.what());
    }
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        std::fprintf(stderr, "usage: inventory list|total|bad\n");
        return 2;
    }
    if (std::strcmp(argv[1], "list") == 0)
        return cmd_list();
    if (std::strcmp(argv[1], "total") == 0)
        return cmd_total();
    if (std::strcmp(argv[1], "bad") == 0)
        return cmd_bad();
    return 2;
}
