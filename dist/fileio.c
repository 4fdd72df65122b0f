#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "core.h"

double epm_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

epm_status epm_read_file(const char *path, size_t max_bytes, char **data, size_t *size)
{
    *data = NULL;
    *size = 0;
    FILE *f = fopen(path, "rb");
    if (!f)
        return epm_fail(EPM_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode)) {
        fclose(f);
        return epm_fail(EPM_ERR_IO, "%s: not a regular file", path);
    }
    if ((unsigned long long)st.st_size > max_bytes) {
        fclose(f);
        return epm_fail(EPM_ERR_FORMAT, "%s: file is %lld bytes, more than the %zu allowed", path,
                        (long long)st.st_size, max_bytes);
    }
    size_t n = (size_t)st.st_size;
    char *buf = epm_malloc(n + 1);
    if (!buf) {
        fclose(f);
        return EPM_ERR_NOMEM;
    }
    if (n && fread(buf, 1, n, f) != n) {
        epm_free(buf);
        fclose(f);
        return epm_fail(EPM_ERR_IO, "%s: short read", path);
    }
    fclose(f);
    buf[n] = '\0';
    *data = buf;
    *size = n;
    return EPM_OK;
}

epm_status epm_file_write(void *file, const char *path, const void *buf, size_t n)
{
    if (n && fwrite(buf, 1, n, (FILE *)file) != n)
        return epm_fail(EPM_ERR_IO, "%s: write failed: %s", path, strerror(errno));
    return EPM_OK;
}

/* A writer killed between create and rename leaves PATH.tmp.PID behind:
 * remove those whose process is gone, so that they do not pile up. Best
 * effort (another host's writer on a shared file system looks dead here,
 * which is why only this exact pattern of this exact path is touched). */
static void remove_stale_temps(const char *path)
{
    char dir[4096];
    const char *slash = strrchr(path, '/');
    const char *base = slash ? slash + 1 : path;
    int n = !slash ? snprintf(dir, sizeof dir, ".")
            : slash == path ? snprintf(dir, sizeof dir, "/")
                            : snprintf(dir, sizeof dir, "%.*s", (int)(slash - path), path);
    if (n < 0 || n >= (int)sizeof dir)
        return;
    DIR *d = opendir(dir);
    if (!d)
        return;
    size_t bl = strlen(base);
    for (struct dirent *e; (e = readdir(d));) {
        const char *nm = e->d_name;
        if (strncmp(nm, base, bl) || strncmp(nm + bl, ".tmp.", 5))
            continue;
        char *end;
        long pid = strtol(nm + bl + 5, &end, 10);
        if (*end || pid <= 0 || pid == (long)getpid() || kill((pid_t)pid, 0) == 0 || errno != ESRCH)
            continue;
        char full[8192];
        if (snprintf(full, sizeof full, "%s/%s", dir, nm) < (int)sizeof full)
            unlink(full);
    }
    closedir(d);
}

epm_status epm_write_atomic(const char *path, epm_produce_fn produce, void *ctx)
{
    remove_stale_temps(path);
    char tmp[4096];
    int len = snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid());
    if (len < 0 || (size_t)len >= sizeof tmp)
        return epm_fail(EPM_ERR_INVALID_ARG, "%s: path too long", path);
    FILE *f = fopen(tmp, "wb");
    if (!f)
        return epm_fail(EPM_ERR_IO, "%s: cannot create (as %s, renamed once written): %s", path, tmp,
                        strerror(errno));
    epm_status st = produce(ctx, f);
    if (st == EPM_OK && fflush(f) != 0)
        st = epm_fail(EPM_ERR_IO, "%s: write failed (to %s): %s", path, tmp, strerror(errno));
    if (st == EPM_OK && fsync(fileno(f)) != 0 && errno != EINVAL)
        st = epm_fail(EPM_ERR_IO, "%s: fsync failed (of %s): %s", path, tmp, strerror(errno));
    if (fclose(f) != 0 && st == EPM_OK)
        st = epm_fail(EPM_ERR_IO, "%s: close failed (of %s): %s", path, tmp, strerror(errno));
    if (st == EPM_OK && rename(tmp, path) != 0)
        st = epm_fail(EPM_ERR_IO, "%s: cannot rename %s to it: %s", path, tmp, strerror(errno));
    if (st != EPM_OK)
        unlink(tmp);
    return st;
}

int epm_same_file(const char *a, const char *b)
{
    struct stat sa, sb;
    if (!a || !b || stat(a, &sa) != 0 || stat(b, &sb) != 0)
        return 0;
    return sa.st_dev == sb.st_dev && sa.st_ino == sb.st_ino;
}
