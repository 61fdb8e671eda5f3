#define _POSIX_C_SOURCE 200809L
/* The example programs as a user meets them: bad command-line values are
   refused up front with a message naming the option (exit 2), outputs are
   written whole or not at all, the SVG chart escapes its text and skips
   points it cannot draw. The CLI cases run the built programs. */
#include "harness.h"
#include "../examples/common/outfile.h"
#include "../examples/common/run.h"
#include "../examples/common/svg.h"
#include <dirent.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define MODEL_PATH "models/SmolLM2-135M-Instruct.Q4_1.gguf"

static void test_arg_parsing(void) {
    int i = -7;
    long long ll = 0;
    double d = -7;
    CHECK(arg_int("t", "--x", "12", 0, 100, &i) == 0 && i == 12);
    CHECK(arg_int("t", "--x", "-3", -5, 5, &i) == 0 && i == -3);
    i = 99;
    CHECK(arg_int("t", "--x", "12x", 0, 100, &i) != 0 && i == 99);
    CHECK(arg_int("t", "--x", "", 0, 100, &i) != 0);
    CHECK(arg_int("t", "--x", "abc", 0, 100, &i) != 0);
    CHECK(arg_int("t", "--x", "101", 0, 100, &i) != 0);
    CHECK(arg_int("t", "--x", "2147483648", 0, 2147483647, &i) != 0);
    CHECK(arg_ll("t", "--x", "99999999999999999999", 0, 9223372036854775807LL, &ll) != 0); /* ERANGE */
    CHECK(arg_num("t", "--x", "0.5", 0, 1, &d) == 0 && d == 0.5);
    CHECK(arg_num("t", "--x", "nan", 0, 1, &d) != 0);
    CHECK(arg_num("t", "--x", "inf", 0, 1e300, &d) != 0);
    CHECK(arg_num("t", "--x", "1e-9", 1e-6, 1, &d) != 0);
    CHECK(arg_num("t", "--x", "0.5.", 0, 1, &d) != 0);
}

static char *slurp(const char *path) {
    size_t n;
    return read_text(path, &n);
}

/* number of "<base>.tmp.*" files left in build/ */
static int tmp_left(const char *base) {
    DIR *d = opendir("build");
    struct dirent *e;
    char pre[256];
    int n = 0;
    if (!d) return -1;
    snprintf(pre, sizeof pre, "%s.tmp.", base);
    while ((e = readdir(d)))
        if (!strncmp(e->d_name, pre, strlen(pre))) n++;
    closedir(d);
    return n;
}

static void test_outfile_atomic(void) {
    outfile o;
    char err[256], *s;
    FILE *fp = fopen("build/cli_out.txt", "w");
    CHECK(fp != NULL);
    if (!fp) return;
    fputs("old", fp);
    fclose(fp);
    /* an abandoned write leaves the old file as it was */
    CHECK(outfile_open(&o, "build/cli_out.txt", err, sizeof err) == 0);
    fputs("half of a new fi", o.fp);
    outfile_abort(&o);
    s = slurp("build/cli_out.txt");
    CHECK(s && !strcmp(s, "old"));
    free(s);
    CHECK(tmp_left("cli_out.txt") == 0);
    /* a committed one replaces it whole */
    CHECK(outfile_open(&o, "build/cli_out.txt", err, sizeof err) == 0);
    fputs("new", o.fp);
    CHECK(outfile_commit(&o, err, sizeof err) == 0);
    s = slurp("build/cli_out.txt");
    CHECK(s && !strcmp(s, "new"));
    free(s);
    CHECK(tmp_left("cli_out.txt") == 0);
    /* a directory that does not exist: refused before any work */
    CHECK(outfile_check("build/no-such-dir/x.gguf", err, sizeof err) != 0 && strstr(err, "no-such-dir"));
    /* the rename fails (the target is a directory): error, target intact, no temporary left */
    mkdir("build/cli_dir_target", 0755);
    CHECK(outfile_open(&o, "build/cli_dir_target", err, sizeof err) == 0);
    fputs("x", o.fp);
    CHECK(outfile_commit(&o, err, sizeof err) != 0 && strstr(err, "nothing written"));
    {
        struct stat st;
        CHECK(stat("build/cli_dir_target", &st) == 0 && S_ISDIR(st.st_mode));
    }
    CHECK(tmp_left("cli_dir_target") == 0);
    CHECK(same_file("build/cli_out.txt", "build/../build/cli_out.txt") == 1);
    CHECK(same_file("build/cli_out.txt", "build/cli_dir_target") == 0);
    CHECK(same_file("build/cli_out.txt", "build/no-such-file") == 0);
}

static void test_svg_escaping_and_nan(void) {
    double x[4] = {100, 200, 300, 400}, y[4] = {30, NAN, 20, INFINITY};
    svg_series s = {"a<b & \"c\"", 4, x, y};
    char *t;
    CHECK(svg_chart("build/cli_chart.svg", "title <&>", "x", "y", &s, 1, 23.0, "GQA 23") == 0);
    t = slurp("build/cli_chart.svg");
    CHECK(t != NULL);
    if (!t) return;
    CHECK(strstr(t, "a&lt;b &amp; &quot;c&quot;") != NULL);
    CHECK(strstr(t, "title &lt;&amp;&gt;") != NULL);
    CHECK(strstr(t, "<b") == NULL && strstr(t, "<&") == NULL);
    CHECK(strstr(t, "nan") == NULL && strstr(t, "inf") == NULL);
    CHECK(strstr(t, "<circle") != NULL); /* the finite points are drawn */
    free(t);
    CHECK(svg_chart("build/no-such-dir/c.svg", "t", "x", "y", &s, 1, 23.0, "g") != 0);
}

/* runs a command line, returns its exit status; stderr's last line in msg */
static int run_cmd(const char *cmd, char *msg, size_t cap) {
    char full[2048];
    int rc;
    FILE *fp;
    snprintf(full, sizeof full, "%s >/dev/null 2>build/cli_err.txt", cmd);
    rc = system(full);
    msg[0] = 0;
    if ((fp = fopen("build/cli_err.txt", "r"))) {
        char line[512];
        while (fgets(line, sizeof line, fp)) snprintf(msg, cap, "%s", line);
        fclose(fp);
    }
    return rc == -1 ? -1 : (rc >> 8) & 0xff;
}

static void test_cli_bad_values(void) {
    /* {command, exit status, a piece of the message}; the model is loaded
       only by the cases after the first NULL marker, so they need it */
    static const char *cases[][3] = {
        {"build/mla-convert --model M --out build/x.gguf --rope-dim -100", "2", "--rope-dim -100: expected an integer"},
        {"build/mla-convert --model M --out build/x.gguf --rank -5", "2", "--rank -5"},
        {"build/mla-convert --model M --out build/x.gguf --rank abc", "2", "--rank abc"},
        {"build/mla-convert --model M --out build/x.gguf --rank 0", "2", "--rank 0"},
        {"build/mla-convert --model M --out build/x.gguf --freqfold 0", "2", "--freqfold 0"},
        {"build/mla-convert --model M --out build/x.gguf --calib-tokens -1", "2", "--calib-tokens -1"},
        {"build/mla-convert --model M --out build/x.gguf --calib-tokens 10 --sequential", "2", "from 256"},
        {"build/mla-convert --model M --out build/x.gguf --key-weight nan", "2", "--key-weight nan"},
        {"build/mla-convert --model M --out build/x.gguf --q-rank -1", "2", "--q-rank -1"},
        {"build/mla-convert --model M --out build/x.gguf --ctx 0", "2", "--ctx 0"},
        {"build/mla-convert --model M --out build/x.gguf --method foo", "2", "unknown method"},
        {"build/mla-convert --model M --out build/x.gguf --refit all", "2", "unknown --refit all"},
        {"build/mla-convert --model M --out build/x.gguf --refit-damp 0", "2", "--refit-damp 0"},
        {"build/mla-convert --model M --out build/no-such-dir/x.gguf", "1", "cannot write build/no-such-dir/x.gguf"},
        {"build/mla-run --model M --prompt hi -n abc", "2", "-n abc"},
        {"build/mla-run --model M --prompt hi -n 2147483647", "2", "-n 2147483647"},
        {"build/mla-run --model M --ppl F --ctx 0", "2", "--ctx 0"},
        {"build/mla-run --model M --prompt hi --temp nan", "2", "--temp nan"},
        {"build/mla-run --model M --prompt hi --top-p 0", "2", "--top-p 0"},
        {"build/mla-run --model M --prompt hi --seed 12x", "2", "--seed 12x"},
        {"build/mla-run --model M --prompt hi --cache bogus", "2", "--cache bogus"},
        {"build/mla-tradeoff --ranks 128,x", "2", "--ranks x"},
        {"build/mla-tradeoff --freqfold 0", "2", "--freqfold 0"},
        {"build/mla-tradeoff --methods qaware-er-refit,qaware-er-x", "2", "expected names from"},
        {"build/mla-tradeoff --tsv build/no-such-dir/t.tsv", "1", "cannot write build/no-such-dir/t.tsv"},
        {"build/mla-tradeoff --tsv build/cli_t.tsv --svg build/no-such-dir/t.svg", "1", "cannot write build/no-such-dir/t.svg"},
        {NULL, NULL, NULL},
        {"build/mla-convert --model M --out M", "2", "is the source model"},
        {"build/mla-convert --model M --out build/x.gguf --rank 100000", "2", "2L - m = 320"},
        {"build/mla-convert --model M --out build/x.gguf --rope-dim 1000", "2", "at most the GQA key width L = 192"},
        {"build/mla-convert --model M --out build/x.gguf --calib F --calib-tokens 256 --freqfold auto", "2", "needs calibration"},
        {"build/mla-run --model M --ppl build/cli_short.txt --ctx 512", "1", "fewer than --ctx 512"},
    };
    size_t i;
    int need_model = 0, have_model;
    FILE *fp = fopen(MODEL_PATH, "rb");
    have_model = fp != NULL;
    if (fp) fclose(fp);
    if ((fp = fopen("build/cli_short.txt", "w"))) { fputs("a short text\n", fp); fclose(fp); }
    for (i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char cmd[1024], msg[512], *o = cmd;
        const char *p;
        int rc;
        if (!cases[i][0]) { need_model = 1; continue; }
        if (need_model && !have_model) continue;
        for (p = cases[i][0]; *p && o < cmd + sizeof cmd - 64; p++) { /* M: the model, F: a text */
            if (*p == 'M' && (p[1] == ' ' || !p[1]) && p[-1] == ' ') o += sprintf(o, "%s", MODEL_PATH);
            else if (*p == 'F' && (p[1] == ' ' || !p[1]) && p[-1] == ' ') o += sprintf(o, "/usr/share/common-licenses/BSD");
            else *o++ = *p;
        }
        *o = 0;
        rc = run_cmd(cmd, msg, sizeof msg);
        th_check(rc == atoi(cases[i][1]) && strstr(msg, cases[i][2]) != NULL, cases[i][0], __FILE__, __LINE__);
        if (rc != atoi(cases[i][1]) || !strstr(msg, cases[i][2]))
            fprintf(stderr, "    exit %d, message: %s", rc, msg);
    }
    if (!have_model) th_note("model-loading CLI cases skipped: %s missing", MODEL_PATH);
}

/* every committed fuzz input (seeds, and the inputs of crashes found and
   fixed) through its target again, built without libFuzzer (make fuzz runs
   the fuzzers themselves) */
static void test_fuzz_corpus_replay(void) {
    static const char *targets[] = {"gguf", "api", "convert", "tokenizer"};
    size_t i;
    for (i = 0; i < sizeof targets / sizeof targets[0]; i++) {
        char cmd[256], msg[512];
        int rc;
        if (!strcmp(targets[i], "tokenizer")) { /* its target loads the model's tokenizer */
            FILE *fp = fopen(MODEL_PATH, "rb");
            if (!fp) {
                th_note("tokenizer corpus skipped: %s missing", MODEL_PATH);
                continue;
            }
            fclose(fp);
        }
        snprintf(cmd, sizeof cmd, "build/replay_%s tests/corpus/%s", targets[i], targets[i]);
        rc = run_cmd(cmd, msg, sizeof msg);
        th_check(rc == 0 && !strncmp(msg, "replayed ", 9) && atoi(msg + 9) > 0, targets[i], __FILE__, __LINE__);
        th_note("fuzz_%s corpus: %.*s", targets[i], (int)strcspn(msg, "\n"), msg);
    }
}

/* the README's Usage snippet, compiled as written (tests/readme_usage.c) */
static void test_readme_snippet(void) {
    char msg[512];
    int rc = run_cmd("(build/readme_usage 1>&2)", msg, sizeof msg);
    CHECK(rc == 0 && strstr(msg, "README snippet") != NULL);
    th_note("%.*s", (int)strcspn(msg, "\n"), msg);
}

void suite_cli(void) {
    RUN(test_readme_snippet);
    RUN(test_arg_parsing);
    RUN(test_outfile_atomic);
    RUN(test_svg_escaping_and_nan);
    RUN(test_cli_bad_values);
    RUN(test_fuzz_corpus_replay);
}
