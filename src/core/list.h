/*
 * list.h - intrusive doubly linked lists.
 *
 * A list head is a node whose next and prev point at itself when empty.
 * A node that is in no list has next == prev == NULL, so that membership
 * can be tested cheaply; haul__list_del() restores that.
 */
#ifndef HAUL_CORE_LIST_H
#define HAUL_CORE_LIST_H

#include <stddef.h>

typedef struct haul__list {
    struct haul__list *next, *prev;
} haul__list;

#define HAUL__CONTAINER(ptr, type, member) ((type *)((char *)(ptr)-offsetof(type, member)))

static inline void haul__list_init(haul__list *head)
{
    head->next = head->prev = head;
}

static inline int haul__list_empty(const haul__list *head)
{
    return head->next == head;
}

static inline int haul__list_linked(const haul__list *node)
{
    return node->next != NULL;
}

static inline void haul__list_add_tail(haul__list *head, haul__list *node)
{
    node->prev = head->prev;
    node->next = head;
    head->prev->next = node;
    head->prev = node;
}

/* Inserts node first, before every other element. */
static inline void haul__list_add_head(haul__list *head, haul__list *node)
{
    haul__list_add_tail(head->next, node);
}

static inline void haul__list_del(haul__list *node)
{
    if (node->next == NULL)
        return;
    node->prev->next = node->next;
    node->next->prev = node->prev;
    node->next = node->prev = NULL;
}

static inline haul__list *haul__list_first(const haul__list *head)
{
    return haul__list_empty(head) ? NULL : head->next;
}

#define haul__list_each(pos, head) for ((pos) = (head)->next; (pos) != (head); (pos) = (pos)->next)

/* Iteration that tolerates removal of the current node. */
#define haul__list_each_safe(pos, tmp, head)                                                       \
    for ((pos) = (head)->next, (tmp) = (pos)->next; (pos) != (head);                               \
         (pos) = (tmp), (tmp) = (pos)->next)

#endif
