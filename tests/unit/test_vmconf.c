/* test_vmconf.c - vm.yaml: the full and minimal fixtures, sizes, PCI addresses, one error per kind of mistake
 * (file, line and field), and the domain XML against golden files, well-formed and escaped. Runs in
 * tests/fixtures (meson's workdir), so fixture paths are relative to it. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#ifdef HAVE_LIBXML2
#include <libxml/parser.h>
#include <libxml/relaxng.h>
#include <libxml/tree.h>
#include <libxml/xpath.h>
#endif

#include "vmconf.h"

#define LIBVIRT_DOMAIN_RNG "/usr/share/libvirt/schemas/domain.rng"

static char *read_all(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f) fail_msg("cannot open %s: %s", path, strerror(errno));
    char *buf = NULL;
    size_t len = 0, cap = 0;
    for (;;) {
        if (len + 4096 + 1 > cap) {
            cap = cap ? cap * 2 : 8192;
            buf = realloc(buf, cap);
            assert_non_null(buf);
        }
        size_t got = fread(buf + len, 1, cap - len - 1, f);
        len += got;
        if (got == 0) break;
    }
    fclose(f);
    buf[len] = '\0';
    return buf;
}

static titan_vmconf load_ok(const char *yaml)
{
    titan_vmconf c;
    char err[512] = "";
    int rc = titan_vmconf_load_string(yaml, strlen(yaml), "t.yaml", &c, err, sizeof err);
    if (rc != 0) fail_msg("unexpected error %d: %s\n--- yaml:\n%s", rc, err, yaml);
    return c;
}

static titan_vmconf load_fixture(const char *path)
{
    titan_vmconf c;
    char err[512] = "";
    int rc = titan_vmconf_load_file(path, &c, err, sizeof err);
    if (rc != 0) fail_msg("unexpected error %d loading %s: %s", rc, path, err);
    return c;
}

#define MINIMAL_HEAD "name: t\nmemory: 1GiB\nvcpus: 2\ndisk: {path: /img/t.qcow2}\n"

/* Expects -EINVAL, a one-line message starting with `prefix` ("t.yaml:LINE: FIELD") and containing
 * `needle`, and *out untouched. */
static void expect_err_at(int srcline, const char *yaml, const char *prefix, const char *needle)
{
    titan_vmconf c, before;
    memset(&c, 0x5a, sizeof c);
    memset(&before, 0x5a, sizeof before);
    char err[512] = "";
    int rc = titan_vmconf_load_string(yaml, strlen(yaml), "t.yaml", &c, err, sizeof err);
    bool ok = rc == -EINVAL && strncmp(err, prefix, strlen(prefix)) == 0 &&
              (!needle || strstr(err, needle)) && !strchr(err, '\n') && memcmp(&c, &before, sizeof c) == 0;
    if (!ok)
        fail_msg(
            "case on line %d: rc %d, message \"%s\" (want prefix \"%s\" and \"%s\"), out %s\n--- yaml:\n%s",
            srcline, rc, err, prefix, needle ? needle : "",
            memcmp(&c, &before, sizeof c) ? "written" : "untouched", yaml);
}
#define expect_err(yaml, prefix, needle) expect_err_at(__LINE__, yaml, prefix, needle)

/* --- well-formedness: libxml2 where the build has it, else xmllint, else a tag balance check --- */

#ifndef HAVE_LIBXML2
/* Start and end tags pair up, attributes are quoted, and no bare & or < sits in text. */
static bool tags_balanced(const char *x)
{
    char stack[64][64];
    int depth = 0;
    const char *p = x;
    while (*p) {
        if (*p == '&') {
            const char *semi = strchr(p, ';');
            if (!semi || semi - p > 6) return false;
            p = semi + 1;
            continue;
        }
        if (*p != '<') {
            if (*p == '>') return false;
            p++;
            continue;
        }
        bool closing = p[1] == '/';
        const char *n = p + (closing ? 2 : 1);
        size_t nl = strcspn(n, " />\n");
        if (nl == 0 || nl >= 64) return false;
        const char *q = n + nl;
        char quote = 0;
        while (*q && (quote || *q != '>')) {
            if (quote && *q == '<') return false;
            if (*q == '\'' || *q == '"') quote = quote == *q ? 0 : (quote ? quote : *q);
            q++;
        }
        if (!*q) return false;
        bool empty = q[-1] == '/';
        if (closing) {
            if (depth == 0 || strncmp(stack[depth - 1], n, nl) != 0 || stack[depth - 1][nl]) return false;
            depth--;
        } else if (!empty) {
            if (depth == 64) return false;
            memcpy(stack[depth], n, nl);
            stack[depth++][nl] = '\0';
        }
        p = q + 1;
    }
    return depth == 0;
}
#endif

/* Fails unless `xml` is a well-formed document (and, with libxml2 and libvirt's schemas installed, a valid
 * libvirt domain). */
static void check_well_formed(const char *what, const char *xml)
{
#ifdef HAVE_LIBXML2
    xmlDocPtr doc = xmlReadMemory(xml, (int)strlen(xml), what, NULL, XML_PARSE_NONET | XML_PARSE_NOERROR);
    if (!doc) fail_msg("%s is not well-formed XML", what);
    if (access(LIBVIRT_DOMAIN_RNG, R_OK) == 0) {
        xmlRelaxNGParserCtxtPtr pc = xmlRelaxNGNewParserCtxt(LIBVIRT_DOMAIN_RNG);
        xmlRelaxNGPtr schema = pc ? xmlRelaxNGParse(pc) : NULL;
        if (schema) {
            xmlRelaxNGValidCtxtPtr vc = xmlRelaxNGNewValidCtxt(schema);
            int v = vc ? xmlRelaxNGValidateDoc(vc, doc) : -1;
            xmlRelaxNGFreeValidCtxt(vc);
            xmlRelaxNGFree(schema);
            xmlRelaxNGFreeParserCtxt(pc);
            if (v != 0) {
                xmlFreeDoc(doc);
                fail_msg("%s does not validate against %s", what, LIBVIRT_DOMAIN_RNG);
            }
        } else {
            xmlRelaxNGFreeParserCtxt(pc);
        }
    }
    xmlFreeDoc(doc);
#else
    if (system("command -v xmllint >/dev/null 2>&1") == 0) {
        char path[] = "/tmp/test_vmconf_XXXXXX";
        int fd = mkstemp(path);
        assert_true(fd >= 0);
        size_t len = strlen(xml);
        assert_int_equal(write(fd, xml, len), (ssize_t)len);
        close(fd);
        char cmd[256];
        snprintf(cmd, sizeof cmd, "xmllint --noout '%s'", path);
        int rc = system(cmd);
        unlink(path);
        if (rc != 0) fail_msg("%s is not well-formed XML (xmllint)", what);
    } else if (!tags_balanced(xml)) {
        fail_msg("%s is not well-formed XML (tag check)", what);
    }
#endif
}

/* --- loading --- */

static void test_full(void **state)
{
    (void)state;
    titan_vmconf c = load_fixture("vm/full.yaml");
    assert_string_equal(c.name, "titan-worker"); /* the design's names */
    assert_int_equal(c.memory_kib, 8ULL * 1024 * 1024);
    assert_int_equal(c.vcpus, 4);
    assert_int_equal(c.sockets, 1);
    assert_int_equal(c.cores, 2);
    assert_int_equal(c.threads, 2);
    assert_string_equal(c.disk_path, "/var/lib/libvirt/images/titan-worker.qcow2");
    assert_int_equal(c.disk_size_bytes, 40ULL << 30);
    assert_string_equal(c.disk_format, "qcow2");
    assert_int_equal(c.ngpus, 2);
    assert_string_equal(c.gpus[0], "0000:03:00.0");
    assert_string_equal(c.gpus[1], "0000:03:00.1");
    assert_string_equal(c.firmware, "efi"); /* found through QEMU's descriptors by titan vm */
    assert_string_equal(c.loader, "");
    assert_string_equal(c.nvram, "");
    assert_string_equal(c.network, "default");
    assert_string_equal(c.mac, "52:54:00:7a:11:00");
    assert_true(c.guest_agent);
    assert_true(c.hide_kvm);
    assert_string_equal(c.graphics, "spice");
    assert_string_equal(c.machine, "q35");

    /* the documented example in deploy/ is the same file */
    char *a = read_all("vm/full.yaml");
    char *b = read_all("../../deploy/vm/vm.yaml");
    assert_string_equal(a, b);
    free(a);
    free(b);
}

/* The example's commented firmware mapping is the design's (Arch's OVMF) and, uncommented, a valid one. */
static void test_example_firmware(void **state)
{
    (void)state;
    char *text = read_all("../../deploy/vm/vm.yaml");
    char *start = strstr(text, "#   firmware:\n");
    assert_non_null(start);
    char yaml[1024];
    size_t o = (size_t)snprintf(yaml, sizeof yaml, "%s", MINIMAL_HEAD);
    for (const char *l = start; l[0] == '#' && l[1] == ' ' && o < sizeof yaml - 1;) {
        const char *nl = strchr(l, '\n');
        assert_non_null(nl);
        int w = snprintf(yaml + o, sizeof yaml - o, "%.*s\n", (int)(nl - l - 4), l + 4); /* drop "#   " */
        assert_true(w > 0 && (size_t)w < sizeof yaml - o);
        o += (size_t)w;
        l = nl + 1;
    }
    titan_vmconf c = load_ok(yaml);
    assert_string_equal(c.loader, "/usr/share/edk2/x64/OVMF_CODE.4m.fd");
    assert_string_equal(c.nvram, "/var/lib/libvirt/qemu/nvram/titan-worker_VARS.fd");
    free(text);
}

static void test_minimal(void **state)
{
    (void)state;
    titan_vmconf c = load_fixture("vm/minimal.yaml");
    assert_string_equal(c.name, "titan-worker");
    assert_int_equal(c.memory_kib, 4096ULL * 1024); /* a bare number is MiB */
    assert_int_equal(c.vcpus, 2);
    assert_int_equal(c.sockets, 0);
    assert_int_equal(c.cores, 0);
    assert_int_equal(c.threads, 0);
    assert_string_equal(c.disk_path, "/var/lib/libvirt/images/titan-worker.qcow2");
    assert_int_equal(c.disk_size_bytes, 0);
    assert_string_equal(c.disk_format, "qcow2");
    assert_int_equal(c.ngpus, 0);
    assert_string_equal(c.firmware, "efi");
    assert_string_equal(c.loader, "");
    assert_string_equal(c.nvram, "");
    assert_string_equal(c.network, "default");
    assert_string_equal(c.mac, "");
    assert_false(c.guest_agent);
    assert_false(c.hide_kvm);
    assert_string_equal(c.graphics, "none");
    assert_string_equal(c.machine, "q35");
}

static void test_sizes(void **state)
{
    (void)state;
    static const struct {
        const char *text;
        uint64_t kib;
    } cases[] = {
        {"8GiB", 8ULL << 20}, {"8192MiB", 8ULL << 20},    {"8G", 8ULL << 20},   {"8 GiB", 8ULL << 20},
        {"8GB", 8ULL << 20},  {"8388608KiB", 8ULL << 20}, {"8192", 8ULL << 20}, {"256MiB", 256ULL << 10},
        {"1TiB", 1ULL << 30}, {"512M", 512ULL << 10},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char yaml[256];
        snprintf(yaml, sizeof yaml, "name: t\nmemory: %s\nvcpus: 1\ndisk: {path: /x, size: %s}\n",
                 cases[i].text, cases[i].text);
        if (strcmp(cases[i].text, "8192") == 0) /* disk sizes need a unit */
            snprintf(yaml, sizeof yaml, "name: t\nmemory: %s\nvcpus: 1\ndisk: {path: /x}\n", cases[i].text);
        titan_vmconf c = load_ok(yaml);
        if (c.memory_kib != cases[i].kib)
            fail_msg("%s: %llu KiB, want %llu", cases[i].text, (unsigned long long)c.memory_kib,
                     (unsigned long long)cases[i].kib);
        if (strcmp(cases[i].text, "8192") != 0) assert_int_equal(c.disk_size_bytes, cases[i].kib * 1024);
    }
}

static void test_pci_and_values(void **state)
{
    (void)state;
    titan_vmconf c = load_ok(MINIMAL_HEAD "gpu: [03:00.0, 0000:0A:1F.7, ABCD:ff:00.1]\n");
    assert_int_equal(c.ngpus, 3);
    assert_string_equal(c.gpus[0], "0000:03:00.0");
    assert_string_equal(c.gpus[1], "0000:0a:1f.7");
    assert_string_equal(c.gpus[2], "abcd:ff:00.1");

    c = load_ok(MINIMAL_HEAD "gpu: 0000:03:00.0\n"); /* one function, without a list */
    assert_int_equal(c.ngpus, 1);
    assert_string_equal(c.gpus[0], "0000:03:00.0");

    c = load_ok(MINIMAL_HEAD "gpu: []\nnetwork: none\nfirmware: bios\ngraphics: none\nguest_agent: no\n"
                             "hide_kvm: off\nmachine: pc-q35-7.2\ntopology: {cores: 2}\n");
    assert_int_equal(c.ngpus, 0);
    assert_string_equal(c.network, "");
    assert_string_equal(c.firmware, "bios");
    assert_string_equal(c.machine, "pc-q35-7.2");
    assert_false(c.guest_agent);
    assert_int_equal(c.sockets, 1);
    assert_int_equal(c.cores, 2);
    assert_int_equal(c.threads, 1);

    c = load_ok(MINIMAL_HEAD "mac: 52-54-00-AB-CD-EF\nnetwork: nat0\n");
    assert_string_equal(c.mac, "52:54:00:ab:cd:ef");
    assert_string_equal(c.network, "nat0");

    c = load_ok("name: t\nmemory: 1GiB\nvcpus: 1\ndisk:\n  path: /x.img\n  format: raw\n  size: 2G\n");
    assert_string_equal(c.disk_format, "raw");
    assert_int_equal(c.disk_size_bytes, 2ULL << 30);

    /* eight functions is the most */
    c = load_ok(MINIMAL_HEAD
                "gpu: [01:00.0, 01:00.1, 02:00.0, 02:00.1, 03:00.0, 03:00.1, 04:00.0, 04:00.1]\n");
    assert_int_equal(c.ngpus, TITAN_VM_MAX_GPUS);
    assert_string_equal(c.gpus[7], "0000:04:00.1");
}

static void test_errors(void **state)
{
    (void)state;
    /* missing required fields: reported on the mapping's first line */
    expect_err("memory: 1GiB\nvcpus: 1\ndisk: {path: /x}\n", "t.yaml:1: name: missing", "name: titan-worker");
    expect_err("name: t\nvcpus: 1\ndisk: {path: /x}\n", "t.yaml:1: memory: missing", "8GiB");
    expect_err("name: t\nmemory: 1G\ndisk: {path: /x}\n", "t.yaml:1: vcpus: missing", NULL);
    expect_err("name: t\nmemory: 1G\nvcpus: 1\n", "t.yaml:1: disk: missing", "path:");
    expect_err("name: t\nmemory: 1G\nvcpus: 1\ndisk:\n  size: 4G\n", "t.yaml:4: disk.path: missing", NULL);
    expect_err("", "t.yaml:1: ", "empty");
    expect_err("- a\n- b\n", "t.yaml:1: ", "must be a mapping");

    /* unknown fields are errors, naming the field and the known ones */
    expect_err(MINIMAL_HEAD "gpus: [03:00.0]\n", "t.yaml:5: \"gpus\": unknown field", "did you mean gpu?");
    expect_err(MINIMAL_HEAD "gpus: [03:00.0]\n", "t.yaml:5: ", "name, memory, vcpus, topology, disk, gpu");
    expect_err(MINIMAL_HEAD "colour: blue\n", "t.yaml:5: \"colour\": unknown field", "use one of: name,");
    expect_err("name: t\nmemory: 1G\nvcpus: 1\ndisk:\n  path: /x\n  fromat: raw\n",
               "t.yaml:6: disk.\"fromat\": unknown field", "did you mean format?");
    expect_err(MINIMAL_HEAD "firmware: {loader: /a, vars: /b}\n",
               "t.yaml:5: firmware.\"vars\": unknown field", "loader, nvram");
    expect_err(MINIMAL_HEAD "topology: {sockets: 1, cpus: 2}\n", "t.yaml:5: topology.\"cpus\": unknown field",
               "sockets, cores, threads");
    expect_err(MINIMAL_HEAD "name: u\n", "t.yaml:5: name: given twice (first on line 1)", NULL);

    /* name */
    expect_err("name: my vm\nmemory: 1G\nvcpus: 1\ndisk: {path: /x}\n",
               "t.yaml:1: name: \"my vm\" is not a VM name", "A-Z a-z 0-9 _ . -");
    expect_err("name: ../etc\nmemory: 1G\nvcpus: 1\ndisk: {path: /x}\n", "t.yaml:1: name: ", "not a VM name");
    expect_err("name: "
               "a234567890123456789012345678901234567890123456789012345678901234\nmemory: 1G\nvcpus: 1\n"
               "disk: {path: /x}\n",
               "t.yaml:1: name: ", "1 to 63");
    expect_err("name: [a]\nmemory: 1G\nvcpus: 1\ndisk: {path: /x}\n", "t.yaml:1: name: is a list", NULL);

    /* sizes */
    expect_err("name: t\nvcpus: 1\nmemory: 8 gigs\ndisk: {path: /x}\n",
               "t.yaml:3: memory: \"8 gigs\" is not a size; write e.g. 8GiB or 8192MiB", NULL);
    expect_err("name: t\nvcpus: 1\nmemory: 1.5GiB\ndisk: {path: /x}\n",
               "t.yaml:3: memory: \"1.5GiB\" is not a size", NULL);
    expect_err("name: t\nvcpus: 1\nmemory: 128MiB\ndisk: {path: /x}\n",
               "t.yaml:3: memory: \"128MiB\" is out of range", "256MiB");
    expect_err("name: t\nvcpus: 1\nmemory: 99999999999999999999999G\ndisk: {path: /x}\n",
               "t.yaml:3: memory: ", "not a size");
    expect_err("name: t\nvcpus: 1\nmemory: 1G\ndisk:\n  path: /x\n  size: 40\n",
               "t.yaml:6: disk.size: \"40\" is not a size with a unit", "40GiB");
    expect_err("name: t\nvcpus: 1\nmemory: 1G\ndisk:\n  path: /x\n  size: 0G\n",
               "t.yaml:6: disk.size: ", "out of range");

    /* vcpus and topology */
    expect_err("name: t\nmemory: 1G\nvcpus: 0\ndisk: {path: /x}\n",
               "t.yaml:3: vcpus: \"0\" is not a whole number", "1 to 256");
    expect_err("name: t\nmemory: 1G\nvcpus: 257\ndisk: {path: /x}\n", "t.yaml:3: vcpus: ", "1 to 256");
    expect_err("name: t\nmemory: 1G\nvcpus: four\ndisk: {path: /x}\n", "t.yaml:3: vcpus: \"four\"", NULL);
    expect_err(
        "name: t\nmemory: 1G\nvcpus: 4\ntopology: {sockets: 1, cores: 2, threads: 1}\ndisk: {path: /x}\n",
        "t.yaml:4: topology: sockets 1 x cores 2 x threads 1 = 2, but vcpus is 4", "equal vcpus");
    expect_err(
        "name: t\nmemory: 1G\nvcpus: 4\ntopology: {sockets: 1, cores: 0, threads: 4}\ndisk: {path: /x}\n",
        "t.yaml:4: topology.cores: \"0\"", NULL);
    expect_err("name: t\nmemory: 1G\nvcpus: 4\ntopology: 4\ndisk: {path: /x}\n",
               "t.yaml:4: topology: ", "sockets:");

    /* disk */
    expect_err("name: t\nmemory: 1G\nvcpus: 1\ndisk:\n  path: images/t.qcow2\n",
               "t.yaml:5: disk.path: \"images/t.qcow2\" is a relative path", "absolute");
    expect_err("name: t\nmemory: 1G\nvcpus: 1\ndisk:\n  path: /x\n  format: vmdk\n",
               "t.yaml:6: disk.format: \"vmdk\" is not a disk format; write qcow2 or raw", NULL);
    expect_err("name: t\nmemory: 1G\nvcpus: 1\ndisk: /x.qcow2\n", "t.yaml:4: disk: is \"/x.qcow2\"", "path:");
    expect_err("name: t\nmemory: 1G\nvcpus: 1\ndisk:\n  path: \"/x\\ty\"\n",
               "t.yaml:5: disk.path: ", "control character");

    /* GPUs */
    expect_err(MINIMAL_HEAD "gpu:\n  - 0000:03:00.0\n  - 3:00.0\n",
               "t.yaml:7: gpu: \"3:00.0\" is not a PCI address", "DDDD:BB:SS.F or BB:SS.F");
    expect_err(MINIMAL_HEAD "gpu: [0000:03:20.0]\n", "t.yaml:5: gpu: ", "not a PCI address"); /* slot > 1f */
    expect_err(MINIMAL_HEAD "gpu: [0000:03:00.8]\n",
               "t.yaml:5: gpu: ", "not a PCI address"); /* function > 7 */
    expect_err(MINIMAL_HEAD "gpu: [0000:g3:00.0]\n", "t.yaml:5: gpu: ", "not a PCI address");
    expect_err(MINIMAL_HEAD "gpu:\n  - 03:00.0\n  - 0000:03:00.0\n",
               "t.yaml:7: gpu: 0000:03:00.0 is listed twice (first on line 6)", NULL);
    expect_err(MINIMAL_HEAD "gpu: [01:00.0, 01:00.1, 02:00.0, 02:00.1, 03:00.0, 03:00.1, 04:00.0, 04:00.1,\n"
                            "  05:00.0]\n",
               "t.yaml:6: gpu: more than 8", NULL);
    expect_err(MINIMAL_HEAD "gpu: {a: 1}\n", "t.yaml:5: gpu: is a mapping", NULL);

    /* firmware, graphics, network, mac, booleans, machine */
    expect_err(MINIMAL_HEAD "firmware: uefi\n", "t.yaml:5: firmware: \"uefi\" is not a firmware",
               "efi, bios, or {loader:");
    expect_err(MINIMAL_HEAD "firmware:\n  nvram: /v.fd\n", "t.yaml:6: firmware.loader: missing", NULL);
    expect_err(MINIMAL_HEAD "firmware:\n  loader: OVMF_CODE.fd\n",
               "t.yaml:6: firmware.loader: ", "relative path");
    expect_err(MINIMAL_HEAD "graphics: vnc\n", "t.yaml:5: graphics: \"vnc\" is not a graphics choice",
               "none or spice");
    expect_err(MINIMAL_HEAD "network: my net\n", "t.yaml:5: network: \"my net\"", "write none or a name");
    expect_err(MINIMAL_HEAD "mac: 52:54:00:12:34\n", "t.yaml:5: mac: \"52:54:00:12:34\" is not a MAC address",
               "52:54:00:12:34:56");
    expect_err(MINIMAL_HEAD "mac: 52:54:00:12:34:zz\n", "t.yaml:5: mac: ", "not a MAC address");
    expect_err(MINIMAL_HEAD "mac: 01:00:5e:00:00:01\n", "t.yaml:5: mac: ", "multicast");
    expect_err(MINIMAL_HEAD "network: none\nmac: 52:54:00:12:34:56\n", "t.yaml:6: mac: ", "network is none");
    expect_err(MINIMAL_HEAD "guest_agent: maybe\n", "t.yaml:5: guest_agent: \"maybe\" is not true or false",
               NULL);
    expect_err(MINIMAL_HEAD "hide_kvm: 1\n", "t.yaml:5: hide_kvm: ", "true or false");
    expect_err(MINIMAL_HEAD "machine: \"q35 -x\"\n", "t.yaml:5: machine: ", "not a machine type");

    /* the YAML itself */
    expect_err(MINIMAL_HEAD "gpu: [03:00.0\n", "t.yaml:", "not valid YAML");
    expect_err("name: &n t\nmemory: 1G\nvcpus: 1\ndisk: {path: /x}\nmachine: *n\n", "t.yaml:5: ", "aliases");
    expect_err(MINIMAL_HEAD "---\nname: u\n", "t.yaml:5: ", "second YAML document");
}

static void test_load_file_errors(void **state)
{
    (void)state;
    titan_vmconf c;
    char err[512] = "";
    assert_int_equal(titan_vmconf_load_file("vm/no-such.yaml", &c, err, sizeof err), -ENOENT);
    assert_non_null(strstr(err, "vm/no-such.yaml: cannot read it"));
    assert_int_equal(titan_vmconf_load_file("vm", &c, err, sizeof err), -EINVAL);
    assert_non_null(strstr(err, "vm: not a regular file"));

    /* file errors carry the file's own name */
    char path[] = "/tmp/test_vmconf_XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    const char *bad = "name: t\nmemory: 8 gigs\nvcpus: 1\ndisk: {path: /x}\n";
    assert_int_equal(write(fd, bad, strlen(bad)), (ssize_t)strlen(bad));
    close(fd);
    assert_int_equal(titan_vmconf_load_file(path, &c, err, sizeof err), -EINVAL);
    char want[128];
    snprintf(want, sizeof want, "%s:2: memory: \"8 gigs\" is not a size; write e.g. 8GiB or 8192MiB", path);
    assert_string_equal(err, want);
    unlink(path);

    /* a short error buffer is cut, not overrun */
    char small[12];
    memset(small, 'x', sizeof small);
    assert_int_equal(titan_vmconf_load_string(bad, strlen(bad), "t.yaml", &c, small, sizeof small), -EINVAL);
    assert_int_equal(strlen(small), sizeof small - 1);
}

/* --- XML --- */

static void check_golden(const char *yaml_path, const char *xml_path)
{
    titan_vmconf c = load_fixture(yaml_path);
    char *xml = titan_vmconf_xml(&c);
    assert_non_null(xml);
    char *want = read_all(xml_path);
    if (strcmp(xml, want) != 0) fail_msg("%s differs from %s; got:\n%s", yaml_path, xml_path, xml);
    check_well_formed(xml_path, want);
    /* deterministic: the same config gives the same bytes */
    char *again = titan_vmconf_xml(&c);
    assert_string_equal(xml, again);
    free(again);
    free(want);
    free(xml);
}

static void test_xml_full(void **state)
{
    (void)state;
    check_golden("vm/full.yaml", "vm/expected/full.xml");
}

static void test_xml_minimal(void **state)
{
    (void)state;
    check_golden("vm/minimal.yaml", "vm/expected/minimal.xml");
}

static void test_xml_variants(void **state)
{
    (void)state;
    /* bios: no firmware attribute and no loader */
    titan_vmconf c = load_ok(MINIMAL_HEAD "firmware: bios\nnetwork: none\n");
    char *x = titan_vmconf_xml(&c);
    assert_non_null(x);
    assert_non_null(
        strstr(x, "  <os>\n    <type arch='x86_64' machine='q35'>hvm</type>\n    <boot dev='hd'/>\n"));
    assert_null(strstr(x, "firmware="));
    assert_null(strstr(x, "<loader"));
    assert_null(strstr(x, "<interface"));
    assert_null(strstr(x, "<kvm>"));
    assert_null(strstr(x, "<channel"));
    assert_non_null(strstr(x, "<video>\n      <model type='none'/>\n    </video>"));
    assert_non_null(strstr(x, "<memballoon model='none'/>"));
    check_well_formed("bios", x);
    free(x);

    /* a loader without nvram; a raw disk; another machine type */
    c = load_ok("name: t\nmemory: 1G\nvcpus: 1\ndisk: {path: /x.img, format: raw}\nmachine: pc-q35-7.2\n"
                "firmware: {loader: /ovmf.fd}\n");
    x = titan_vmconf_xml(&c);
    assert_non_null(x);
    assert_non_null(
        strstr(x, "  <os>\n    <type arch='x86_64' machine='pc-q35-7.2'>hvm</type>\n"
                  "    <loader readonly='yes' type='pflash'>/ovmf.fd</loader>\n    <boot dev='hd'/>\n"));
    assert_null(strstr(x, "<nvram"));
    assert_null(strstr(x, "<firmware>"));
    assert_non_null(strstr(x, "<driver name='qemu' type='raw'/>"));
    check_well_formed("loader", x);
    free(x);

    /* efi without a loader: libvirt picks, steered off Secure Boot */
    c = load_ok(MINIMAL_HEAD);
    x = titan_vmconf_xml(&c);
    assert_non_null(x);
    assert_non_null(strstr(x, "  <os firmware='efi'>\n    <type arch='x86_64' machine='q35'>hvm</type>\n"
                              "    <firmware>\n      <feature enabled='no' name='enrolled-keys'/>\n"
                              "      <feature enabled='no' name='secure-boot'/>\n    </firmware>\n"));
    assert_null(strstr(x, "<loader"));
    free(x);

    /* what a firmware descriptor fills in: the loader and its VARS template */
    c = load_ok(MINIMAL_HEAD);
    snprintf(c.loader, sizeof c.loader, "/usr/share/edk2/x64/OVMF_CODE.4m.fd");
    snprintf(c.nvram_template, sizeof c.nvram_template, "/usr/share/edk2/x64/OVMF_VARS.4m.fd");
    x = titan_vmconf_xml(&c);
    assert_non_null(x);
    assert_non_null(
        strstr(x, "  <os>\n    <type arch='x86_64' machine='q35'>hvm</type>\n"
                  "    <loader readonly='yes' type='pflash'>/usr/share/edk2/x64/OVMF_CODE.4m.fd</loader>\n"
                  "    <nvram template='/usr/share/edk2/x64/OVMF_VARS.4m.fd'/>\n    <boot dev='hd'/>\n"));
    assert_null(strstr(x, "<firmware>"));
    assert_null(strstr(x, "<smm"));
    check_well_formed("descriptor", x);
    free(x);

    /* a Secure Boot build that requires SMM (the only kind some hosts have), with an explicit nvram */
    snprintf(c.nvram, sizeof c.nvram, "/v/t_VARS.fd");
    c.secure_boot = c.smm = true;
    x = titan_vmconf_xml(&c);
    assert_non_null(x);
    assert_non_null(strstr(x, "<loader readonly='yes' secure='yes' type='pflash'>"));
    assert_non_null(strstr(x, "<nvram template='/usr/share/edk2/x64/OVMF_VARS.4m.fd'>/v/t_VARS.fd</nvram>"));
    assert_non_null(strstr(x, "    <apic/>\n    <smm state='on'/>\n"));
    check_well_formed("secure", x);
    free(x);
}

/* kvm: auto|on|off, network: user with its forwards, console_log: parsing, errors and the XML */
static void test_tcg_user_net(void **state)
{
    (void)state;
    titan_vmconf c = load_ok(MINIMAL_HEAD);
    assert_int_equal(c.kvm, TITAN_VM_KVM_AUTO);
    assert_int_equal(c.nforwards, 0);
    assert_string_equal(c.console_log, "");
    static const struct {
        const char *text;
        titan_vm_kvm want;
    } kvms[] = {{"auto", TITAN_VM_KVM_AUTO}, {"on", TITAN_VM_KVM_ON}, {"true", TITAN_VM_KVM_ON},
                {"off", TITAN_VM_KVM_OFF},   {"no", TITAN_VM_KVM_OFF}};
    for (size_t i = 0; i < sizeof kvms / sizeof kvms[0]; i++) {
        char y[256];
        snprintf(y, sizeof y, MINIMAL_HEAD "kvm: %s\n", kvms[i].text);
        c = load_ok(y);
        assert_int_equal(c.kvm, kvms[i].want);
    }

    /* forwards: the address defaults to 127.0.0.1; block and flow lists; a single scalar */
    c = load_ok(MINIMAL_HEAD "network: user\nforward:\n  - 5555:5555\n  - 127.0.0.2:9100:80\n  - 0.0.0.0:65535:1\n");
    assert_true(titan_vmconf_user_net(&c));
    assert_int_equal(c.nforwards, 3);
    assert_string_equal(c.forwards[0].host_addr, "127.0.0.1");
    assert_int_equal(c.forwards[0].host_port, 5555);
    assert_int_equal(c.forwards[0].guest_port, 5555);
    assert_string_equal(c.forwards[1].host_addr, "127.0.0.2");
    assert_int_equal(c.forwards[1].host_port, 9100);
    assert_int_equal(c.forwards[1].guest_port, 80);
    assert_int_equal(c.forwards[2].host_port, 65535);
    c = load_ok(MINIMAL_HEAD "network: user\nforward: [127.0.0.1:15555:5555, 16000:22]\n");
    assert_int_equal(c.nforwards, 2);
    assert_int_equal(c.forwards[1].host_port, 16000);
    c = load_ok(MINIMAL_HEAD "network: user\nforward: 2222:22\nconsole_log: /var/log/t.log\n");
    assert_int_equal(c.nforwards, 1);
    assert_string_equal(c.console_log, "/var/log/t.log");

    expect_err(MINIMAL_HEAD "forward: [5555:5555]\n", "t.yaml:5: forward", "network: user");
    expect_err(MINIMAL_HEAD "network: default\nforward: [5555:5555]\n", "t.yaml:6: forward", "network: user");
    static const char *const bad[] = {"5555",          "0:22",          "22:0",        "65536:22",
                                      "22:65536",      "a:22",          "1.2.3:22:22", "256.0.0.1:22:22",
                                      "01.2.3.4:22:22", "1.2.3.4.5:2:2", "1:2:3:4",     "080:22",
                                      ":22",           "22:",           "127.0.0.1::22", "127.0.0.1:22:"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char y[256];
        snprintf(y, sizeof y, MINIMAL_HEAD "network: user\nforward: ['%s']\n", bad[i]);
        expect_err(y, "t.yaml:6: forward", "is not a port forward");
    }
    expect_err(MINIMAL_HEAD "network: user\nforward: [5555:1, '127.0.0.1:5555:2']\n", "t.yaml:6: forward",
               "forwarded twice");
    expect_err(MINIMAL_HEAD "network: user\nforward: {a: 1}\n", "t.yaml:6: forward", "a list");
    {
        char y[1024] = MINIMAL_HEAD "network: user\nforward: [";
        for (int i = 0; i <= TITAN_VM_MAX_FORWARDS; i++) {
            size_t len = strlen(y);
            snprintf(y + len, sizeof y - len, "%s%d:22", i ? ", " : "", 2000 + i);
        }
        strcat(y, "]\n");
        expect_err(y, "t.yaml:6: forward", "more than 16");
    }
    expect_err(MINIMAL_HEAD "kvm: maybe\n", "t.yaml:5: kvm", "auto, on or off");
    expect_err(MINIMAL_HEAD "kvm: [on]\n", "t.yaml:5: kvm", "auto, on or off");
    expect_err(MINIMAL_HEAD "console_log: rel/x.log\n", "t.yaml:5: console_log", "absolute path");

    /* the XML: KVM (auto renders as KVM), TCG, the user-mode network's QEMU arguments, the console log */
    c = load_ok(MINIMAL_HEAD "hide_kvm: true\n");
    char *x = titan_vmconf_xml(&c);
    assert_non_null(x);
    assert_non_null(strstr(x, "<domain type='kvm'>\n"));
    assert_non_null(strstr(x, "<cpu mode='host-passthrough'/>"));
    assert_non_null(strstr(x, "<hidden state='on'/>"));
    assert_null(strstr(x, "qemu:"));
    free(x);

    c = load_ok(MINIMAL_HEAD "hide_kvm: true\nkvm: off\ntopology: {sockets: 1, cores: 2, threads: 1}\n"
                             "network: user\nforward: [127.0.0.1:15555:5555, 19100:9100]\nmac: 52:54:00:00:00:01\n"
                             "console_log: /var/log/t&c.log\n");
    x = titan_vmconf_xml(&c);
    assert_non_null(x);
    assert_non_null(strstr(x, "<domain type='qemu' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>\n"));
    assert_non_null(strstr(x, "  <cpu mode='maximum' check='none'>\n    <topology sockets='1' cores='2' threads='1'/>\n"));
    assert_null(strstr(x, "host-passthrough"));
    assert_null(strstr(x, "<kvm>")); /* nothing to hide under TCG */
    assert_null(strstr(x, "<hyperv>"));
    assert_null(strstr(x, "<interface"));
    assert_non_null(strstr(x, "    <serial type='pty'>\n      <log file='/var/log/t&amp;c.log' append='off'/>\n"));
    assert_non_null(strstr(
        x, "  </devices>\n  <qemu:commandline>\n    <qemu:arg value='-netdev'/>\n"
           "    <qemu:arg value='user,id=titannet0,hostfwd=tcp:127.0.0.1:15555-:5555,hostfwd=tcp:127.0.0.1:19100-:9100'/>\n"
           "    <qemu:arg value='-device'/>\n"
           "    <qemu:arg value='{\"driver\":\"virtio-net-pci\",\"netdev\":\"titannet0\",\"romfile\":\"\",\"mac\":\"52:54:00:00:00:01\"}'/>\n"
           "  </qemu:commandline>\n</domain>\n"));
    check_well_formed("tcg-user-net", x);
    free(x);
}

static void test_xml_escaping(void **state)
{
    (void)state;
    const char *path = "/srv/R&D/it's <new> \"disk\".qcow2";
    titan_vmconf c =
        load_ok("name: t\nmemory: 1G\nvcpus: 1\ndisk:\n  path: '/srv/R&D/it''s <new> \"disk\".qcow2'\n"
                "firmware: {loader: /a&b/OVMF.fd, nvram: \"/v/x'y.fd\"}\n");
    assert_string_equal(c.disk_path, path);
    char *x = titan_vmconf_xml(&c);
    assert_non_null(x);
    assert_non_null(strstr(x, "<source file='/srv/R&amp;D/it&apos;s &lt;new&gt; &quot;disk&quot;.qcow2'/>"));
    assert_non_null(strstr(x, "<loader readonly='yes' type='pflash'>/a&amp;b/OVMF.fd</loader>"));
    assert_non_null(strstr(x, "<nvram>/v/x&apos;y.fd</nvram>"));
    check_well_formed("escaping", x);
#ifdef HAVE_LIBXML2
    /* and it reads back as the same path */
    xmlDocPtr doc = xmlReadMemory(x, (int)strlen(x), "escaping", NULL, XML_PARSE_NONET);
    assert_non_null(doc);
    xmlXPathContextPtr xp = xmlXPathNewContext(doc);
    xmlXPathObjectPtr r =
        xmlXPathEvalExpression((const xmlChar *)"string(/domain/devices/disk/source/@file)", xp);
    assert_non_null(r);
    assert_string_equal((const char *)r->stringval, path);
    xmlXPathFreeObject(r);
    xmlXPathFreeContext(xp);
    xmlFreeDoc(doc);
#endif
    free(x);

    /* a hand-built config with characters XML cannot hold still gives a well-formed document */
    titan_vmconf h = load_ok(MINIMAL_HEAD);
    snprintf(h.disk_path, sizeof h.disk_path, "/a\x01<b>");
    h.ngpus = 99; /* out of range: clamped, and the unused slots are empty so nothing is written */
    x = titan_vmconf_xml(&h);
    assert_non_null(x);
    assert_non_null(strstr(x, "<source file='/a?&lt;b&gt;'/>"));
    assert_null(strstr(x, "<hostdev"));
    check_well_formed("hand-built", x);
    free(x);
    assert_null(titan_vmconf_xml(NULL));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_full),
        cmocka_unit_test(test_example_firmware),
        cmocka_unit_test(test_minimal),
        cmocka_unit_test(test_sizes),
        cmocka_unit_test(test_pci_and_values),
        cmocka_unit_test(test_errors),
        cmocka_unit_test(test_load_file_errors),
        cmocka_unit_test(test_xml_full),
        cmocka_unit_test(test_xml_minimal),
        cmocka_unit_test(test_xml_variants),
        cmocka_unit_test(test_xml_escaping),
        cmocka_unit_test(test_tcg_user_net),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
