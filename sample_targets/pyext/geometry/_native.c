/* The native half of the geometry package: what its tests call, and what they do not. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

static double clamp(double value, double low, double high)
{
    if (value < low)
        return low;
    if (value > high)
        return high;
    return value;
}

static PyObject *rectangle_area(PyObject *self, PyObject *args)
{
    double width, height;
    if (!PyArg_ParseTuple(args, "dd", &width, &height))
        return NULL;
    if (width < 0 || height < 0) {
        PyErr_SetString(PyExc_ValueError, "negative side");
        return NULL;
    }
    return PyFloat_FromDouble(width * height);
}

static PyObject *polygon_perimeter(PyObject *self, PyObject *args)
{
    PyObject *sides;
    if (!PyArg_ParseTuple(args, "O", &sides))
        return NULL;
    PyObject *iterator = PyObject_GetIter(sides);
    if (iterator == NULL)
        return NULL;
    double total = 0;
    PyObject *item;
    while ((item = PyIter_Next(iterator)) != NULL) {
        double side = PyFloat_AsDouble(item);
        Py_DECREF(item);
        if (side == -1.0 && PyErr_Occurred()) {
            Py_DECREF(iterator);
            return NULL;
        }
        total += clamp(side, 0, 1e9);
    }
    Py_DECREF(iterator);
    return PyFloat_FromDouble(total);
}

static PyObject *ellipse_area(PyObject *self, PyObject *args)
{
    double a, b;
    if (!PyArg_ParseTuple(args, "dd", &a, &b))
        return NULL;
    return PyFloat_FromDouble(3.141592653589793 * a * b);
}

static PyMethodDef methods[] = {
    {"rectangle_area", rectangle_area, METH_VARARGS, "Area of a width x height rectangle."},
    {"polygon_perimeter", polygon_perimeter, METH_VARARGS, "Sum of the sides, each clamped at 0."},
    {"ellipse_area", ellipse_area, METH_VARARGS, "Area of an ellipse of semi-axes a and b."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_native", NULL, -1, methods};

PyMODINIT_FUNC PyInit__native(void)
{
    return PyModule_Create(&module);
}
