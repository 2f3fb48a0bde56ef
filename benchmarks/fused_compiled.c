/* The per-step work of fused_floor.py's FusedFloor, compiled: a timing reference, not mesaguard.
 *
 * The same arithmetic in the same order (CUSUM on the innovation, one forward-substitution row of the mean-shift
 * test per complete block, one finite check, the joint threshold check, the monitor's standardized joint statistic and running maximum) and the same report in
 * info["mesaguard"], built here. fused_compiled.py builds this file with the machine's C compiler and checks its
 * statistics equal to GuardedEnv's at every step before guard_overhead.py times it.
 *
 * Built with -ffp-contract=off, so that no multiply-add is fused and every result is bit for bit Python's.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>

typedef struct {
    double *c_mean, *c_std, c_slack, c_rho, c_gain;  /* cusum: per-block (or one pooled) reference */
    Py_ssize_t c_last, c_block;
    double *m_mu, *m_y, *m_norm, *m_diag, *m_rows, *m_e;  /* meanshift: rows row-major, T x T, row b: b entries */
    Py_ssize_t m_block, m_T;
    double th[2], loc[2], scale[2];
    /* per episode */
    long t, alarm_step, mon_steps;
    int alarm;
    double score, best, c_sum, c_prev, c_acc, m_acc, m_num, m_stat;
    Py_ssize_t c_k, c_t, m_k, m_t;
} Kernel;

static PyObject *K_score, *K_increment, *K_step, *K_statistics, *K_alarm, *K_detector, *K_alarm_step, *K_acting,
    *K_error, *K_refused, *K_deployment, *K_cusum, *K_meanshift, *K_evidence, *K_threshold, *K_episodes,
    *K_steps, *K_mode, *V_agent, *V_anytime;

static void kernel_free(PyObject *capsule) {
    Kernel *k = PyCapsule_GetPointer(capsule, "fused_compiled.Kernel");
    if (k == NULL) return;
    double *arrays[] = {k->c_mean, k->c_std, k->m_mu, k->m_y, k->m_norm, k->m_diag, k->m_rows, k->m_e};
    for (size_t i = 0; i < sizeof arrays / sizeof arrays[0]; i++) PyMem_Free(arrays[i]);
    PyMem_Free(k);
}

/* A new array of the floats of a sequence, its length in *n; NULL with an exception set. */
static double *floats(PyObject *seq, Py_ssize_t *n) {
    PyObject *fast = PySequence_Fast(seq, "expected a sequence of floats");
    if (fast == NULL) return NULL;
    Py_ssize_t size = PySequence_Fast_GET_SIZE(fast);
    double *out = PyMem_Malloc((size_t)(size > 0 ? size : 1) * sizeof(double));
    if (out == NULL) { Py_DECREF(fast); PyErr_NoMemory(); return NULL; }
    for (Py_ssize_t i = 0; i < size; i++) {
        out[i] = PyFloat_AsDouble(PySequence_Fast_GET_ITEM(fast, i));
        if (out[i] == -1.0 && PyErr_Occurred()) { PyMem_Free(out); Py_DECREF(fast); return NULL; }
    }
    Py_DECREF(fast);
    *n = size;
    return out;
}

/* The rows of a sequence of float sequences, each padded with zeros to `width`, in one row-major array. */
static double *matrix(PyObject *rows, Py_ssize_t height, Py_ssize_t width) {
    PyObject *fast = PySequence_Fast(rows, "expected a sequence of rows");
    if (fast == NULL) return NULL;
    if (PySequence_Fast_GET_SIZE(fast) != height) {
        Py_DECREF(fast);
        PyErr_Format(PyExc_ValueError, "expected %zd rows", height);
        return NULL;
    }
    double *out = PyMem_Calloc((size_t)(height * width > 0 ? height * width : 1), sizeof(double));
    if (out == NULL) { Py_DECREF(fast); PyErr_NoMemory(); return NULL; }
    for (Py_ssize_t i = 0; i < height; i++) {
        Py_ssize_t n;
        double *row = floats(PySequence_Fast_GET_ITEM(fast, i), &n);
        if (row == NULL || n > width) {
            if (row != NULL) { PyMem_Free(row); PyErr_Format(PyExc_ValueError, "row %zd is longer than %zd", i, width); }
            PyMem_Free(out); Py_DECREF(fast); return NULL;
        }
        memcpy(out + i * width, row, (size_t)n * sizeof(double));
        PyMem_Free(row);
    }
    Py_DECREF(fast);
    return out;
}

static void restart(Kernel *k) {
    k->t = 0; k->score = 0.0; k->alarm = 0; k->alarm_step = -1; k->best = -INFINITY;
    k->c_sum = k->c_prev = k->c_acc = 0.0; k->c_k = 0; k->c_t = 0;
    k->m_acc = 0.0; k->m_k = 0; k->m_t = 0; k->m_num = 0.0; k->m_stat = 0.0;
}

/* make(cusum, meanshift, thresholds, standard): the parameters as FusedFloor reads them (see fused_compiled.py) */
static PyObject *make(PyObject *self, PyObject *args) {
    PyObject *c_mean, *c_std, *m_mu, *m_y, *m_norm, *m_diag, *m_rows;
    double c_slack, c_rho, c_gain;
    Py_ssize_t c_block, m_block, n;
    double th[2], loc[2], scale[2];
    if (!PyArg_ParseTuple(args, "OOdddn" "nOOOOO" "(dd)((dd)(dd))", &c_mean, &c_std, &c_slack, &c_rho, &c_gain,
                          &c_block, &m_block, &m_mu, &m_y, &m_norm, &m_diag, &m_rows, &th[0], &th[1], &loc[0],
                          &scale[0], &loc[1], &scale[1]))
        return NULL;
    Kernel *k = PyMem_Calloc(1, sizeof(Kernel));
    if (k == NULL) return PyErr_NoMemory();
    PyObject *capsule = PyCapsule_New(k, "fused_compiled.Kernel", kernel_free);
    if (capsule == NULL) { PyMem_Free(k); return NULL; }
    Py_ssize_t steps;
    if ((k->c_mean = floats(c_mean, &steps)) == NULL || (k->c_std = floats(c_std, &n)) == NULL) goto fail;
    if (steps < 1 || n != steps || c_block < 1) {
        PyErr_SetString(PyExc_ValueError, "cusum: mean and std of one length >= 1 and a block >= 1");
        goto fail;
    }
    k->c_last = steps - 1; k->c_block = c_block;
    k->c_slack = c_slack; k->c_rho = c_rho; k->c_gain = c_gain;
    k->m_block = m_block;
    Py_ssize_t ny, nnorm;
    if ((k->m_mu = floats(m_mu, &k->m_T)) == NULL || (k->m_y = floats(m_y, &ny)) == NULL ||
        (k->m_norm = floats(m_norm, &nnorm)) == NULL || (k->m_diag = floats(m_diag, &n)) == NULL ||
        (k->m_rows = matrix(m_rows, k->m_T, k->m_T)) == NULL)
        goto fail;
    if (k->m_T < 1 || ny != k->m_T || nnorm != k->m_T || n != k->m_T || m_block < 1) {
        PyErr_SetString(PyExc_ValueError, "meanshift: mu, y, norm, diag of one length >= 1 and a block >= 1");
        goto fail;
    }
    k->m_e = PyMem_Calloc((size_t)(k->m_T > 0 ? k->m_T : 1), sizeof(double));
    if (k->m_e == NULL) { PyErr_NoMemory(); goto fail; }
    for (int i = 0; i < 2; i++) { k->th[i] = th[i]; k->loc[i] = loc[i]; k->scale[i] = scale[i]; }
    restart(k);
    return capsule;
fail:
    Py_DECREF(capsule);
    return NULL;
}

static Kernel *kernel(PyObject *capsule) { return PyCapsule_GetPointer(capsule, "fused_compiled.Kernel"); }

static PyObject *reset(PyObject *self, PyObject *capsule) {
    Kernel *k = kernel(capsule);
    if (k == NULL) return NULL;
    restart(k);
    Py_RETURN_NONE;
}

/* d[key] = value, the new reference stolen; -1 on failure (value NULL included). */
static int put(PyObject *d, PyObject *key, PyObject *value) {
    if (value == NULL) return -1;
    int rc = PyDict_SetItem(d, key, value);
    Py_DECREF(value);
    return rc;
}

/* step(kernel, increment) -> the report for info["mesaguard"] */
static PyObject *step(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) { PyErr_SetString(PyExc_TypeError, "step(kernel, increment)"); return NULL; }
    Kernel *k = kernel(args[0]);
    if (k == NULL) return NULL;
    double u = PyFloat_AsDouble(args[1]);
    if (u == -1.0 && PyErr_Occurred()) return NULL;
    long t = k->t;
    k->t = t + 1;
    double score = k->score = k->score + u;
    /* cusum on the innovation of each complete block's time-indexed standardized sum */
    k->c_acc += u;
    k->c_k += 1;
    Py_ssize_t i;
    if (k->c_k >= k->c_block) {
        Py_ssize_t b = k->c_t;
        k->c_t = b + 1;
        i = b < k->c_last ? b : k->c_last;
        double z = (k->c_acc - k->c_mean[i]) / k->c_std[i];
        double e = (z - k->c_rho * k->c_prev) * k->c_gain;
        k->c_prev = z;
        double s = k->c_sum - e - k->c_slack;
        k->c_sum = s > 0.0 ? s : 0.0;
        k->c_acc = 0.0;
        k->c_k = 0;
    }
    double c = k->c_sum;
    /* meanshift: one forward-substitution row at each complete block */
    k->m_acc += u;
    k->m_k += 1;
    if (k->m_k >= k->m_block) {
        Py_ssize_t b = k->m_t;
        if (b < k->m_T) {
            const double *row = k->m_rows + b * k->m_T;
            double past = 0.0;
            for (Py_ssize_t j = 0; j < b; j++) past += row[j] * k->m_e[j];
            double eb = (k->m_mu[b] - k->m_acc - past) / k->m_diag[b];
            k->m_e[b] = eb;
            k->m_num += k->m_y[b] * eb;
            k->m_stat = k->m_num / k->m_norm[b];
            k->m_t = b + 1;
        }
        k->m_acc = 0.0;
        k->m_k = 0;
    }
    double m = k->m_stat;
    if (!isfinite(score + c + m)) { PyErr_SetString(PyExc_ValueError, "not finite"); return NULL; }
    if (!k->alarm && (c > k->th[0] || m > k->th[1])) { k->alarm = 1; k->alarm_step = k->t; }
    double x = (c - k->loc[0]) / k->scale[0], x1 = (m - k->loc[1]) / k->scale[1];
    if (x1 > x) x = x1;
    k->mon_steps += 1;
    if (x > k->best) k->best = x;

    PyObject *report = PyDict_New(), *statistics = PyDict_New(), *deployment = PyDict_New();
    if (report == NULL || statistics == NULL || deployment == NULL) goto fail;
    if (put(statistics, K_cusum, PyFloat_FromDouble(c)) || put(statistics, K_meanshift, PyFloat_FromDouble(m)))
        goto fail;
    if (put(deployment, K_evidence, PyFloat_FromDouble(1.0)) || put(deployment, K_threshold, PyFloat_FromDouble(20.0)) ||
        put(deployment, K_alarm, Py_NewRef(Py_False)) || put(deployment, K_episodes, PyLong_FromLong(0)) ||
        put(deployment, K_steps, PyLong_FromLong(k->mon_steps)) || put(deployment, K_mode, Py_NewRef(V_anytime)))
        goto fail;
    if (put(report, K_score, PyFloat_FromDouble(score)) || put(report, K_increment, PyFloat_FromDouble(u)) ||
        put(report, K_step, PyLong_FromLong(k->t)) || PyDict_SetItem(report, K_statistics, statistics) ||
        put(report, K_alarm, PyBool_FromLong(k->alarm)) || put(report, K_detector, Py_NewRef(Py_None)) ||
        put(report, K_alarm_step, k->alarm ? PyLong_FromLong(k->alarm_step) : Py_NewRef(Py_None)) ||
        put(report, K_acting, Py_NewRef(V_agent)) || put(report, K_error, Py_NewRef(Py_None)) ||
        put(report, K_refused, Py_NewRef(Py_False)) || PyDict_SetItem(report, K_deployment, deployment))
        goto fail;
    Py_DECREF(statistics);
    Py_DECREF(deployment);
    return report;
fail:
    Py_XDECREF(report);
    Py_XDECREF(statistics);
    Py_XDECREF(deployment);
    return NULL;
}

static PyMethodDef methods[] = {
    {"make", make, METH_VARARGS, "make(...) -> kernel: the default set and a monitor's per-step state"},
    {"reset", reset, METH_O, "reset(kernel): a new episode"},
    {"step", (PyCFunction)(void (*)(void))step, METH_FASTCALL, "step(kernel, increment) -> the step's report"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "fused_compiled_c", NULL, -1, methods};

PyMODINIT_FUNC PyInit_fused_compiled_c(void) {
    PyObject **keys[] = {&K_score, &K_increment, &K_step, &K_statistics, &K_alarm, &K_detector, &K_alarm_step,
                         &K_acting, &K_error, &K_refused, &K_deployment, &K_cusum, &K_meanshift,
                         &K_evidence, &K_threshold, &K_episodes, &K_steps, &K_mode, &V_agent, &V_anytime};
    const char *names[] = {"score", "increment", "step", "statistics", "alarm", "detector", "alarm_step", "acting",
                           "error", "refused", "deployment", "cusum", "meanshift", "evidence", "threshold",
                           "episodes", "steps", "mode", "agent", "anytime"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if ((*keys[i] = PyUnicode_InternFromString(names[i])) == NULL) return NULL;
    return PyModule_Create(&module);
}
