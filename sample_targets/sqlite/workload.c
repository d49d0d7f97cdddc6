/* sqlite workload N: creates a table with an index, inserts N rows in one transaction,
 * then queries with LIKE, GROUP BY and ORDER BY. On stderr it prints
 * "workload-seconds: S", its own run time from the start to the end of main, so that
 * benchmarks can tell the program's slowdown from the tracer's fixed cost. */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include "sqlite3.h"

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void check(int rc, sqlite3 *db, const char *what)
{
    if (rc != SQLITE_OK && rc != SQLITE_DONE && rc != SQLITE_ROW) {
        fprintf(stderr, "workload: %s: %s\n", what, sqlite3_errmsg(db));
        exit(1);
    }
}

static int print_row(void *unused, int ncol, char **values, char **names)
{
    (void)unused;
    (void)names;
    for (int i = 0; i < ncol; i++)
        printf("%s%s", i ? "|" : "", values[i] ? values[i] : "NULL");
    printf("\n");
    return 0;
}

int main(int argc, char **argv)
{
    double start = now();
    long n = argc > 1 ? atol(argv[1]) : 10000;
    sqlite3 *db;
    check(sqlite3_open(":memory:", &db), db, "open");
    check(sqlite3_exec(db,
                       "CREATE TABLE items(id INTEGER PRIMARY KEY, name TEXT, category INTEGER, price REAL);"
                       "CREATE INDEX items_category ON items(category);",
                       NULL, NULL, NULL),
          db, "create");
    check(sqlite3_exec(db, "BEGIN", NULL, NULL, NULL), db, "begin");
    sqlite3_stmt *insert;
    check(sqlite3_prepare_v2(db, "INSERT INTO items(name, category, price) VALUES (?, ?, ?)", -1, &insert, NULL),
          db, "prepare");
    char name[32];
    for (long i = 0; i < n; i++) {
        snprintf(name, sizeof name, "item-%ld", i * 7919 % 100003);
        sqlite3_bind_text(insert, 1, name, -1, SQLITE_TRANSIENT);
        sqlite3_bind_int(insert, 2, (int)(i % 97));
        sqlite3_bind_double(insert, 3, (i % 1000) / 10.0);
        check(sqlite3_step(insert), db, "insert");
        sqlite3_reset(insert);
    }
    sqlite3_finalize(insert);
    check(sqlite3_exec(db, "COMMIT", NULL, NULL, NULL), db, "commit");
    check(sqlite3_exec(db,
                       "SELECT category, count(*), round(avg(price), 2) FROM items "
                       "WHERE name LIKE 'item-1%' GROUP BY category ORDER BY count(*) DESC LIMIT 5;",
                       print_row, NULL, NULL),
          db, "query");
    check(sqlite3_exec(db, "SELECT count(*) FROM items WHERE category = 42;", print_row, NULL, NULL), db, "count");
    sqlite3_close(db);
    fprintf(stderr, "workload-seconds: %.6f\n", now() - start);
    return 0;
}
