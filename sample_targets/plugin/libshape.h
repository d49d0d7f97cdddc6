int shape_sides(const char *name);
int shape_unused(int x);
