/* A header every unit of the test program includes: changing it changes them all. */
#ifndef SHAPES_H
#define SHAPES_H

#define SCALE_DEFAULT 3

struct point {
    int x;
    int y;
};

static inline int area(const struct point *p)
{
    return p->x * p->y;
}

#endif
