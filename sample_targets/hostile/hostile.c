/* hostile: a binary whose names and paths try to break bpfcov's reports.
 *
 * - a function whose symbol is an HTML payload, one with a comma, one with a quote,
 *   an ampersand and a tag;
 * - code that DWARF says comes from /etc/shadow (through a #line directive), so a report
 *   that reads source files from wherever DWARF points would leak it.
 * Every function runs when the program runs with no arguments. See EXPECTED.md.
 */
#include <stdio.h>

int html_payload(int x) __asm__("\"<img src=x onerror=alert(1)>\"");
int comma_name(int x) __asm__("\"weird,name\"");
int quote_name(int x) __asm__("\"it's & <b>\"");
int from_shadow(int x);

int html_payload(int x)
{
    return x + 1;
}

int comma_name(int x)
{
    return x + 2;
}

int quote_name(int x)
{
    return x + 3;
}


int main(void)
{
    printf("%d\n", html_payload(1) + comma_name(2) + quote_name(3) + from_shadow(4));
    return 0;
}

/* Last in the file: after this directive, DWARF places every line in /etc/shadow. */
#line 1 "/etc/shadow"
int from_shadow(int x)
{
    return x * 2;
}
