/*
 * The OpAMP dashboard: plain JavaScript, no build step, nothing fetched
 * but this server's admin API (its path is in <meta name=opamp-admin-api>,
 * set by the opamp_dashboard directive).  Every text from the API goes
 * into the page as text (textContent), never as HTML.
 */

'use strict';

(function () {

var API = document.querySelector('meta[name="opamp-admin-api"]')
          .getAttribute('content') || '/opamp-admin/';
/* this nginx's Prometheus endpoint (opamp_dashboard's second path), or
 * none */
var METRICS = document.querySelector('meta[name="opamp-metrics"]')
              .getAttribute('content');
var POLL_MS = 5000;
var PAGE = 50;

var view = document.getElementById('view');
var errorBox = document.getElementById('error');
var updated = document.getElementById('updated');
var pollTimer = null;
var route = null;
var generation = 0;

/* --- helpers ----------------------------------------------------------- */

function el(tag, attrs) {
    var e = document.createElement(tag), k, i, c;
    if (attrs) {
        for (k in attrs) {
            if (!Object.prototype.hasOwnProperty.call(attrs, k)
                || attrs[k] === null || attrs[k] === undefined) {
                continue;
            }
            if (k === 'text') {
                e.textContent = attrs[k];
            } else if (k === 'cls') {
                e.className = attrs[k];
            } else if (k.slice(0, 2) === 'on') {
                e.addEventListener(k.slice(2), attrs[k]);
            } else {
                e.setAttribute(k, attrs[k]);
            }
        }
    }
    for (i = 2; i < arguments.length; i++) {
        c = arguments[i];
        if (c === null || c === undefined || c === false) {
            continue;
        }
        if (Array.isArray(c)) {
            c.forEach(function (x) { if (x) { e.appendChild(x); } });
        } else if (typeof c === 'object') {
            e.appendChild(c);
        } else {
            e.appendChild(document.createTextNode(String(c)));
        }
    }
    return e;
}

function clear(node) {
    while (node.firstChild) {
        node.removeChild(node.firstChild);
    }
}

function replace(node) {
    clear(node);
    for (var i = 1; i < arguments.length; i++) {
        if (arguments[i]) {
            node.appendChild(arguments[i]);
        }
    }
}

/* whether data is what box shows already (then it is not drawn again:
 * no flicker, no fold closed, no layout jump at each refresh) */
function unchanged(box, data) {
    var text = JSON.stringify(data === undefined ? null : data);
    if (box.opampShown === text) {
        return true;
    }
    box.opampShown = text;
    return false;
}

function when(ms) {
    if (!ms) {
        return '';
    }
    var d = new Date(Number(ms));
    if (isNaN(d.getTime())) {
        return String(ms);
    }
    var ago = Math.round((Date.now() - d.getTime()) / 1000);
    var rel = ago < 0 ? 'just now'
              : ago < 90 ? ago + ' s ago'
              : ago < 5400 ? Math.round(ago / 60) + ' min ago'
              : ago < 172800 ? Math.round(ago / 3600) + ' h ago'
              : Math.round(ago / 86400) + ' days ago';
    return d.toISOString().replace('T', ' ').replace(/\.\d+Z$/, ' UTC')
           + ' (' + rel + ')';
}

function short(h) {
    h = String(h || '');
    return h.length > 12 ? h.slice(0, 12) + '\u2026' : h;
}

function pill(text, kind) {
    return el('span', { cls: 'pill ' + (kind || '') }, text);
}

function statusPill(s) {
    s = s || 'UNSET';
    return pill(s, s === 'APPLIED' ? 'ok' : s === 'FAILED' ? 'bad'
                   : s === 'APPLYING' ? 'warn' : '');
}

function healthPill(h) {
    if (h === 1 || h === '1' || h === true) {
        return pill('healthy', 'ok');
    }
    if (h === 0 || h === '0' || h === false) {
        return pill('unhealthy', 'bad');
    }
    return pill('unknown');
}

function livePill(live) {
    return live ? pill('connected', 'ok') : pill('disconnected');
}

function hash(h) {
    return el('span', { cls: 'mono', title: h || '' }, short(h) || '\u2014');
}

/* the text of an OpAMP AnyValue as the admin API writes it */
function anyValue(v) {
    if (!v || typeof v !== 'object') {
        return '';
    }
    if ('string_value' in v) { return v.string_value; }
    if ('int_value' in v) { return String(v.int_value); }
    if ('bool_value' in v) { return String(v.bool_value); }
    if ('double_value' in v) { return String(v.double_value); }
    return JSON.stringify(v);
}

function query(params) {
    var parts = [];
    Object.keys(params).forEach(function (k) {
        var v = params[k];
        if (v === undefined || v === null || v === '') {
            return;
        }
        (Array.isArray(v) ? v : [v]).forEach(function (x) {
            if (x !== '') {
                parts.push(encodeURIComponent(k) + '='
                           + encodeURIComponent(x));
            }
        });
    });
    return parts.length ? '?' + parts.join('&') : '';
}

function seg(s) {
    return encodeURIComponent(s);
}

/* --- the admin API ----------------------------------------------------- */

function ApiError(message, status) {
    this.message = message;
    this.status = status;
}

/* a request to the admin API; rejects with an ApiError whose message
 * says in words what went wrong */
function api(method, path, body, headers) {
    var opts = { method: method, headers: headers || {},
                 credentials: 'same-origin', cache: 'no-store' };
    if (body !== undefined) {
        opts.body = typeof body === 'string' ? body : JSON.stringify(body);
        opts.headers['Content-Type'] = 'application/json';
    }
    var what = method + ' ' + API + path;
    return fetch(API + path, opts).then(function (res) {
        return res.text().then(function (text) {
            var data = null;
            try {
                data = text ? JSON.parse(text) : null;
            } catch (e) {
                data = null;
            }
            if (res.ok) {
                return data;
            }
            var reason = data && data.error ? data.error
                         : res.status === 401 ? 'not authorized (log in to '
                           + 'the admin API)'
                         : res.status === 403 ? 'forbidden by the server\'s '
                           + 'access control'
                         : res.status === 404 ? 'not found'
                         : res.status === 413 ? 'the request is larger than '
                           + 'the server accepts (client_max_body_size)'
                         : res.status === 503 ? 'the server cannot reach '
                           + 'its agent store, retry later'
                         : res.statusText || 'no reason given';
            throw new ApiError(what + ' failed: ' + res.status + ' '
                               + reason, res.status);
        });
    }, function (e) {
        throw new ApiError(what + ' failed: the server did not answer ('
                           + (e && e.message ? e.message : e) + ')', 0);
    });
}

function showError(e) {
    errorBox.textContent = e && e.message ? e.message : String(e);
    errorBox.hidden = false;
}

function clearError() {
    errorBox.hidden = true;
    errorBox.textContent = '';
}

function stamp() {
    updated.textContent = 'Updated ' + new Date().toLocaleTimeString();
}

/* a message beside a form or button: done or the API's error */
function note(box, text, ok) {
    box.className = 'msg ' + (ok ? 'ok' : 'bad');
    box.textContent = text;
}

/* --- routing ----------------------------------------------------------- */

function parseRoute() {
    var h = location.hash.replace(/^#\/?/, '');
    var q = '', i = h.indexOf('?');
    if (i >= 0) {
        q = h.slice(i + 1);
        h = h.slice(0, i);
    }
    var parts = h.split('/').filter(Boolean).map(decodeURIComponent);
    var params = {};
    q.split('&').forEach(function (kv) {
        if (!kv) {
            return;
        }
        var j = kv.indexOf('=');
        var k = decodeURIComponent(j < 0 ? kv : kv.slice(0, j));
        var v = j < 0 ? '' : decodeURIComponent(kv.slice(j + 1));
        if (k === 'attr') {
            (params.attr = params.attr || []).push(v);
        } else {
            params[k] = v;
        }
    });
    return { name: parts[0] || 'summary', args: parts.slice(1),
             params: params };
}

var views = {};

function go() {
    route = parseRoute();
    var name = views[route.name] ? route.name : 'summary';
    document.querySelectorAll('nav a').forEach(function (a) {
        var v = a.getAttribute('data-view');
        var on = v === name || (name === 'agent' && v === 'agents')
                 || (name === 'group' && v === 'groups');
        if (on) {
            a.setAttribute('aria-current', 'page');
        } else {
            a.removeAttribute('aria-current');
        }
    });
    clearError();
    if (pollTimer) {
        clearTimeout(pollTimer);
        pollTimer = null;
    }
    generation++;
    clear(view);
    views[name](route, generation);
}

/* polls refresh(gen) every POLL_MS while the view is the one shown */
function poll(gen, refresh) {
    function tick() {
        if (gen !== generation) {
            return;
        }
        refresh().then(function () {
            stamp();
        }, function (e) {
            if (gen === generation) {
                showError(e);
            }
        }).then(function () {
            if (gen === generation && !document.hidden) {
                pollTimer = setTimeout(tick, POLL_MS);
            } else if (gen === generation) {
                pollTimer = setTimeout(tick, POLL_MS * 2);
            }
        });
    }
    tick();
}

/* --- summary ----------------------------------------------------------- */

function card(label, n, kind, href) {
    var body = [el('span', { cls: 'n' }, n === undefined ? '0' : String(n)),
                el('span', { cls: 'l' }, label)];
    if (href) {
        return el('a', { cls: 'card ' + (kind || ''), href: href }, body);
    }
    return el('div', { cls: 'card ' + (kind || '') }, body);
}

/* the samples of a Prometheus text exposition: name{labels} -> value */
function parseMetrics(text) {
    var out = {};
    text.split('\n').forEach(function (line) {
        var m = /^([a-z_:]+(\{[^}]*\})?) (\S+)$/.exec(line);
        if (m) {
            out[m[1]] = Number(m[3]);
        }
    });
    return out;
}

/* a family's samples summed over their labels */
function metricSum(samples, name) {
    var n = 0;
    Object.keys(samples).forEach(function (k) {
        if (k === name || k.indexOf(name + '{') === 0) {
            n += samples[k];
        }
    });
    return n;
}

/* this nginx's own figures, from the metrics endpoint: rates between two
 * polls */
function serverFigures(box, gen) {
    var last = null;
    return function () {
        return fetch(METRICS, { credentials: 'same-origin',
                                cache: 'no-store' }).then(function (res) {
            if (!res.ok) {
                throw new ApiError('GET ' + METRICS + ' failed: '
                                   + res.status + ' ' + res.statusText,
                                   res.status);
            }
            return res.text();
        }, function (e) {
            throw new ApiError('GET ' + METRICS + ' failed: the server did '
                               + 'not answer (' + e.message + ')', 0);
        }).then(function (text) {
            if (gen !== generation) {
                return;
            }
            var s = parseMetrics(text), now = Date.now();
            var cur = { t: now,
                        in: metricSum(s, 'opamp_agent_messages_total'),
                        out: metricSum(s, 'opamp_server_messages_total'),
                        redis: metricSum(s, 'opamp_redis_commands_total') };
            function rate(k) {
                if (!last || now <= last.t) {
                    return '\u2026';
                }
                return (Math.round((cur[k] - last[k]) * 10000
                                   / (now - last.t)) / 10).toString();
            }
            replace(box,
                card('WebSocket agents on this nginx',
                     metricSum(s, 'opamp_websocket_connections')),
                card('agent messages / s', rate('in')),
                card('server messages / s', rate('out')),
                card('Redis commands / s', rate('redis')),
                card('Redis commands waiting',
                     metricSum(s, 'opamp_redis_commands_waiting')),
                card('messages refused',
                     metricSum(s, 'opamp_refused_total')));
            last = cur;
        });
    };
}

/* each host's own figures (GET hosts): what each nginx of the fleet
 * publishes of itself every few seconds; rates between two publishes of
 * the same host; a host whose record expired is stale */
function hostFigures(box, gen) {
    /* per host: its latest record, and the one before it */
    var cur = {}, prev = {};
    function total(f, k) {
        return Number(f[k + '_http'] || 0) + Number(f[k + '_websocket'] || 0);
    }
    function rate(name, k) {
        var a = prev[name], b = cur[name];
        if (!a || !b || b.published_ms <= a.published_ms) {
            return '\u2026';
        }
        var d = k === 'redis_commands' ? b[k] - a[k]
                : total(b, k) - total(a, k);
        return String(Math.round(d * 10000
                                 / (b.published_ms - a.published_ms)) / 10);
    }
    return function () {
        return api('GET', 'hosts').then(function (res) {
            if (gen !== generation) {
                return;
            }
            var hosts = res.hosts || [];
            if (!hosts.length) {
                replace(box, el('p', { cls: 'muted' },
                                'No host has published its figures yet.'));
                return;
            }
            replace(box, el('table', { id: 'hosts-table' },
                el('thead', null, el('tr', null,
                    el('th', null, 'host'),
                    el('th', null, 'state'),
                    el('th', { cls: 'num' }, 'WebSocket agents'),
                    el('th', { cls: 'num' }, 'agent msg/s'),
                    el('th', { cls: 'num' }, 'server msg/s'),
                    el('th', { cls: 'num' }, 'Redis cmd/s'),
                    el('th', { cls: 'num wide-only' }, 'Redis waiting'),
                    el('th', { cls: 'num wide-only',
                               title: 'errors, timeouts, reconnects' },
                       'Redis err/tmo/rec'),
                    el('th', { cls: 'num wide-only' }, 'refused'),
                    el('th', { cls: 'num wide-only' }, 'fan-outs'),
                    el('th', { cls: 'wide-only' }, 'nginx'),
                    el('th', { cls: 'wide-only' }, 'up since'))),
                el('tbody', null, hosts.map(function (h) {
                    var f = h.figures;
                    if (f && (!cur[h.name]
                              || cur[h.name].published_ms
                                 !== f.published_ms)) {
                        prev[h.name] = cur[h.name];
                        cur[h.name] = f;
                    }
                    if (h.stale || !f) {
                        return el('tr', { cls: 'stale',
                                          'data-host': h.name },
                            el('td', null, h.name),
                            el('td', null, pill('stale', 'bad')),
                            el('td', { colspan: '10', cls: 'muted' },
                               'last heard ' + when(h.last_publish_ms)
                               + '; no figures since: it stopped, or '
                               + 'cannot reach Redis'));
                    }
                    var row = el('tr', { 'data-host': h.name },
                        el('td', null, h.name),
                        el('td', null, pill('live', 'ok')),
                        el('td', { cls: 'num' },
                           String(f.websocket_connections)),
                        el('td', { cls: 'num' },
                           rate(h.name, 'agent_messages')),
                        el('td', { cls: 'num' },
                           rate(h.name, 'server_messages')),
                        el('td', { cls: 'num' },
                           rate(h.name, 'redis_commands')),
                        el('td', { cls: 'num wide-only' },
                           String(f.redis_waiting)),
                        el('td', { cls: 'num wide-only' },
                           f.redis_errors + ', ' + f.redis_timeouts + ', '
                           + f.redis_reconnects),
                        el('td', { cls: 'num wide-only' }, String(f.refused)),
                        el('td', { cls: 'num wide-only' }, String(f.fanouts)),
                        el('td', { cls: 'wide-only' }, f.nginx_version
                           + ', ' + f.workers + ' workers'),
                        el('td', { cls: 'wide-only' }, when(f.started_ms)));
                    return row;
                }))));
        });
    };
}

views.summary = function (r, gen) {
    var cards = el('div', { cls: 'cards', id: 'summary-cards' });
    var groups = el('div', { cls: 'scroll' });
    view.appendChild(el('h2', null, 'Fleet summary'));
    view.appendChild(cards);
    view.appendChild(el('h2', null, 'Groups'));
    view.appendChild(groups);
    var hostsBox = el('div', { cls: 'scroll', id: 'hosts' });
    view.appendChild(el('h2', null, 'Hosts ',
                        el('span', { cls: 'muted' },
                           '(each nginx of the fleet, as it publishes '
                           + 'itself)')));
    view.appendChild(hostsBox);
    poll(gen, hostFigures(hostsBox, gen));
    if (METRICS) {
        var server = el('div', { cls: 'cards', id: 'server-cards' });
        view.appendChild(el('h2', null, 'This nginx ',
                            el('span', { cls: 'muted' }, '(' + location.host
                                         + ', all its workers)')));
        view.appendChild(server);
        poll(gen, serverFigures(server, gen));
    }

    poll(gen, function () {
        return api('GET', 'fleet').then(function (f) {
            if (gen !== generation) {
                return;
            }
            var g = f.gauges || {};
            replace(cards,
                card('agents known', f.agents, '', '#/agents'),
                card('connected (live)', f.agents_live, 'ok',
                     '#/agents?connected=1'),
                card('over WebSocket', g['transport:websocket']),
                card('over plain HTTP', g['transport:http']),
                card('healthy', g['health:healthy'], 'ok',
                     '#/agents?healthy=1'),
                card('unhealthy', g['health:unhealthy'],
                     g['health:unhealthy'] ? 'bad' : '',
                     '#/agents?healthy=0'),
                card('config APPLIED', g['status:APPLIED'], 'ok',
                     '#/agents?config_status=APPLIED'),
                card('config APPLYING', g['status:APPLYING'], '',
                     '#/agents?config_status=APPLYING'),
                card('config FAILED', g['status:FAILED'],
                     g['status:FAILED'] ? 'bad' : '',
                     '#/agents?config_status=FAILED'),
                card('no config status', g['status:UNSET'], '',
                     '#/agents?config_status=UNSET'),
                card('running what they should', g['owed:running'], 'ok'),
                card('not running what they should', g['owed:not_running'],
                     g['owed:not_running'] ? 'bad' : ''));

            var names = Object.keys(g).filter(function (k) {
                return k.indexOf('group:') === 0;
            }).map(function (k) { return k.slice(6); }).sort();
            if (!names.length) {
                replace(groups, el('p', { cls: 'muted' },
                                   'No agent takes its config from a group.'));
                return;
            }
            replace(groups, el('table', null,
                el('thead', null, el('tr', null,
                    el('th', null, 'group'),
                    el('th', { cls: 'num' }, 'agents'),
                    el('th', { cls: 'num' }, 'FAILED'),
                    el('th', { cls: 'num' }, 'not running its config'))),
                el('tbody', null, names.map(function (n) {
                    /* each count opens the group's agents (GET
                     * agents?group=), FAILED narrowed to those */
                    return el('tr', null,
                        el('td', null,
                           el('a', { href: '#/group/' + seg(n) }, n)),
                        el('td', { cls: 'num' },
                           el('a', { href: '#/agents' + query({ group: n }),
                                     cls: 'group-agents' },
                              String(g['group:' + n] || 0))),
                        el('td', { cls: 'num' },
                           el('a', { href: '#/agents'
                                     + query({ group: n,
                                               config_status: 'FAILED' }),
                                     cls: 'group-failed' },
                              String(g['group_failed:' + n] || 0))),
                        el('td', { cls: 'num' },
                           String(g['group_not_running:' + n] || 0)));
                }))));
        });
    });
};

/* --- inventory --------------------------------------------------------- */

var DIMENSIONS = [
    { key: 'version', title: 'By service.version',
      link: function (v) { return { attr: 'service.version=' + v }; } },
    { key: 'os', title: 'By os.type',
      link: function (v) { return { attr: 'os.type=' + v }; } },
    { key: 'config', title: 'By reported config hash',
      link: function (v) { return { config_hash: v }; } },
    { key: 'component', title: 'By component',
      link: function (v) { return { component: v }; } }
];

views.inventory = function (r, gen) {
    view.appendChild(el('h2', null, 'What runs where'));
    var boxes = {};
    var grid = el('div', { cls: 'grid2' });
    DIMENSIONS.forEach(function (d) {
        boxes[d.key] = el('div', { cls: 'scroll' });
        grid.appendChild(el('section', null, el('h3', null, d.title),
                            boxes[d.key]));
    });
    view.appendChild(grid);

    poll(gen, function () {
        return api('GET', 'fleet').then(function (f) {
            if (gen !== generation) {
                return;
            }
            var inv = f.inventory || {};
            DIMENSIONS.forEach(function (d) {
                var rows = [];
                Object.keys(inv).forEach(function (k) {
                    if (k.indexOf(d.key + ':') === 0) {
                        rows.push({ v: k.slice(d.key.length + 1),
                                    n: inv[k] });
                    } else if (k === 'other:' + d.key
                               || (d.key === 'component'
                                   && k === 'other:components')) {
                        rows.push({ v: null, n: inv[k] });
                    }
                });
                if (unchanged(boxes[d.key], rows)) {
                    return;
                }
                rows.sort(function (a, b) {
                    return b.n - a.n || (a.v < b.v ? -1 : a.v > b.v ? 1 : 0);
                });
                if (!rows.length) {
                    replace(boxes[d.key], el('p', { cls: 'muted' },
                                             'None reported.'));
                    return;
                }
                if (d.key !== 'component') {
                    replace(boxes[d.key], invTable(d, rows));
                    return;
                }
                /* components folded by kind (receivers, exporters...),
                 * a fold stays open across refreshes */
                var kinds = {}, order = [];
                rows.forEach(function (row) {
                    var kind = row.v === null ? '(others)'
                               : row.v.split('/')[0];
                    if (!kinds[kind]) {
                        kinds[kind] = [];
                        order.push(kind);
                    }
                    kinds[kind].push(row);
                });
                order.sort();
                replace.apply(null, [boxes[d.key]].concat(order.map(
                    function (kind) {
                        var det = el('details', { 'data-kind': kind },
                            el('summary', null, kind + ' ('
                               + kinds[kind].length + ')'),
                            invTable(d, kinds[kind]));
                        det.open = !!openKinds[kind];
                        det.addEventListener('toggle', function () {
                            openKinds[kind] = det.open;
                        });
                        return det;
                    })));
            });
        });
    });
};

var openKinds = {};

/* one dimension's counts, each a link to its agents */
function invTable(d, rows) {
    return el('table', null, el('tbody', null, rows.map(function (row) {
        var label = row.v === null
            ? el('span', { cls: 'muted' },
                 '(others: past the inventory\'s bound)')
            : row.v === '' ? el('span', { cls: 'muted' }, '(none reported)')
            : el('span', { cls: d.key === 'config' ? 'mono' : '' }, row.v);
        /* no attribute is no filter of GET agents: not a link */
        var count = row.v === null || row.v === '' ? String(row.n)
            : el('a', { href: '#/agents' + query(d.link(row.v)),
                        title: 'open the matching agents' },
                 String(row.n));
        return el('tr', null, el('td', null, label),
                  el('td', { cls: 'num' }, count));
    })));
}

/* --- agents ------------------------------------------------------------ */

views.agents = function (r, gen) {
    var p = r.params;
    var attrs = (p.attr || []).join(', ');
    var cursor = p.cursor || '0';

    function sel(name, label, options) {
        return el('label', null, label, el('select', { name: name },
            options.map(function (o) {
                var opt = el('option', { value: o[0] }, o[1]);
                if ((p[name] || '') === o[0]) {
                    opt.selected = true;
                }
                return opt;
            })));
    }

    var form = el('form', { cls: 'filters', id: 'agent-filters',
                            role: 'search' },
        el('label', null, 'attributes (key=value, comma between)',
           el('input', { name: 'attr', id: 'filter-attr', value: attrs,
                         size: 32, placeholder: 'service.name=checkout' })),
        sel('connected', 'connected', [['', 'any'], ['1', 'yes'],
                                       ['0', 'no']]),
        sel('healthy', 'health', [['', 'any'], ['1', 'healthy'],
                                  ['0', 'unhealthy']]),
        sel('config_status', 'config status', [['', 'any'],
            ['APPLIED', 'APPLIED'], ['APPLYING', 'APPLYING'],
            ['FAILED', 'FAILED'], ['UNSET', 'UNSET']]),
        el('label', null, 'config hash',
           el('input', { name: 'config_hash', value: p.config_hash || '',
                         size: 14 })),
        el('label', null, 'component',
           el('input', { name: 'component', value: p.component || '',
                         size: 16, placeholder: 'receivers/otlp' })),
        el('label', null, 'group',
           el('input', { name: 'group', id: 'filter-group',
                         value: p.group || '', size: 12 })),
        el('button', { type: 'submit', cls: 'primary' }, 'Filter'),
        el('a', { href: '#/agents' }, 'clear'));

    form.addEventListener('submit', function (ev) {
        ev.preventDefault();
        var fd = new FormData(form);
        var q = {
            attr: String(fd.get('attr') || '').split(',').map(function (s) {
                return s.trim();
            }).filter(Boolean),
            connected: fd.get('connected'),
            healthy: fd.get('healthy'),
            config_status: fd.get('config_status'),
            config_hash: String(fd.get('config_hash') || '').trim(),
            component: String(fd.get('component') || '').trim(),
            group: String(fd.get('group') || '').trim()
        };
        location.hash = '#/agents' + query(q);
    });

    var table = el('div', { cls: 'scroll', id: 'agents-table' });
    var pager = el('div', { cls: 'row' });
    /* a group's agents come in the group's rank order (the order a
     * staged rollout reaches them), the others newest first */
    view.appendChild(el('h2', null, 'Agents ',
                        el('span', { cls: 'muted' }, p.group
                           ? '(of group ' + p.group + ', in rollout order)'
                           : '(newest last seen first)')));
    view.appendChild(form);
    view.appendChild(table);
    view.appendChild(pager);

    var params = { limit: PAGE, cursor: cursor === '0' ? '' : cursor,
                   attr: p.attr, connected: p.connected, healthy: p.healthy,
                   config_status: p.config_status,
                   config_hash: p.config_hash, component: p.component,
                   group: p.group };

    poll(gen, function () {
        return api('GET', 'agents' + query(params)).then(function (res) {
            if (gen !== generation) {
                return;
            }
            if (unchanged(table, res)) {
                return;
            }
            var rows = res.agents || [];
            if (!rows.length) {
                replace(table, el('p', { cls: 'muted' },
                    res.next_cursor ? 'No agent matched among those '
                    + 'examined on this page: go on to the next page.'
                    : 'No agent matches.'));
            } else {
                replace(table, el('table', null,
                    el('thead', null, el('tr', null,
                        el('th', null, 'instance uid'),
                        el('th', null, 'service'),
                        el('th', null, 'version'),
                        el('th', { cls: 'wide-only' }, 'host'),
                        el('th', null, 'connection'),
                        el('th', null, 'health'),
                        el('th', null, 'config'),
                        el('th', { cls: 'wide-only' }, 'last seen'))),
                    el('tbody', null, rows.map(function (a) {
                        var at = a.attributes || {};
                        return el('tr', null,
                            el('td', { cls: 'mono' },
                               el('a', { href: '#/agent/' + a.instance_uid },
                                  a.instance_uid)),
                            el('td', null, at['service.name'] || ''),
                            el('td', null, at['service.version'] || ''),
                            el('td', { cls: 'wide-only' },
                               at['host.name'] || ''),
                            el('td', null, livePill(a.live)),
                            el('td', null, healthPill(a.healthy)),
                            el('td', null, statusPill(a.config_status)),
                            el('td', { cls: 'wide-only' },
                               when(a.last_seen_ms)));
                    }))));
            }
            var q = Object.assign({}, p);
            replace(pager,
                cursor !== '0' ? el('a', { href: '#/agents'
                    + query(Object.assign({}, q, { cursor: '' })) },
                    'First page') : null,
                res.next_cursor ? el('a', { id: 'next-page', href: '#/agents'
                    + query(Object.assign({}, q,
                                          { cursor: res.next_cursor })) },
                    'Next page') : el('span', { cls: 'muted' },
                                      'Last page.'));
        });
    });
};

/* --- one agent --------------------------------------------------------- */

function attrTable(list) {
    if (!list || !list.length) {
        return el('p', { cls: 'muted' }, 'none');
    }
    return el('table', null, el('tbody', null, list.map(function (kv) {
        return el('tr', null, el('td', null, kv.key),
                  el('td', null, anyValue(kv.value)));
    })));
}

function healthTree(h, depth, budget) {
    if (!h || depth > 8 || budget.n-- <= 0) {
        return null;
    }
    var line = el('li', null,
        healthPill(h.healthy === undefined ? null : h.healthy), ' ',
        h.status || '', h.last_error
            ? el('span', { cls: 'msg bad' }, ' ' + h.last_error) : null);
    var sub = h.component_health_map || {};
    var names = Object.keys(sub).sort();
    if (names.length) {
        line.appendChild(el('ul', { cls: 'tree' }, names.map(function (n) {
            var li = healthTree(sub[n], depth + 1, budget);
            if (li) {
                li.insertBefore(el('strong', null, n + ' '), li.firstChild);
            }
            return li;
        })));
    }
    return line;
}

/* each kind (receivers, exporters, ...) folded, with its count */
function componentTree(map, depth, budget) {
    var names = Object.keys(map || {}).sort();
    if (!names.length || depth > 6) {
        return null;
    }
    return el('ul', { cls: depth ? 'tree' : 'tree top' },
        names.map(function (n) {
            if (budget.n-- <= 0) {
                return null;
            }
            var c = map[n] || {};
            var meta = (c.metadata || []).map(function (kv) {
                return kv.key + '=' + anyValue(kv.value);
            }).join(', ');
            var subs = Object.keys(c.sub_component_map || {}).length;
            var line = [el('span', { cls: 'mono' }, n),
                        meta ? el('span', { cls: 'muted' }, ' ' + meta)
                             : null];
            if (!subs) {
                return el('li', null, line);
            }
            return el('li', null, el('details', null,
                el('summary', null, line, ' (' + subs + ')'),
                componentTree(c.sub_component_map, depth + 1, budget)));
        }));
}

/* a line diff of two texts in the unified form, bounded: null when the
 * texts are too large to compare here */
function lineDiff(a, b) {
    var x = a.split('\n'), y = b.split('\n');
    var n = x.length, m = y.length, i, j;
    if (n * m > 4000000) {
        return null;
    }
    var w = m + 1, t = new Uint32Array((n + 1) * w);
    for (i = n - 1; i >= 0; i--) {
        for (j = m - 1; j >= 0; j--) {
            t[i * w + j] = x[i] === y[j] ? t[(i + 1) * w + j + 1] + 1
                : Math.max(t[(i + 1) * w + j], t[i * w + j + 1]);
        }
    }
    var out = [];
    i = 0;
    j = 0;
    while (i < n || j < m) {
        if (i < n && j < m && x[i] === y[j]) {
            out.push([' ', x[i]]);
            i++;
            j++;
        } else if (j < m
                   && (i === n || t[i * w + j + 1] >= t[(i + 1) * w + j])) {
            out.push(['+', y[j]]);
            j++;
        } else {
            out.push(['-', x[i]]);
            i++;
        }
    }
    return out;
}

function diffBlock(ops) {
    var changed = ops.some(function (o) { return o[0] !== ' '; });
    if (!changed) {
        return el('p', { cls: 'msg ok' }, 'The same text.');
    }
    return el('pre', { cls: 'diff' }, ops.map(function (o) {
        return el('span', { cls: o[0] === '+' ? 'add' : o[0] === '-' ? 'del'
                                 : 'ctx' }, o[0] + ' ' + o[1]);
    }));
}

/* a unified diff as the API writes it, coloured */
function unifiedBlock(text) {
    return el('pre', { cls: 'diff' }, String(text).split('\n').map(
        function (l) {
            var c = l.charAt(0);
            return el('span', { cls: l.indexOf('@@') === 0 ? 'hunk'
                                     : c === '+' ? 'add' : c === '-' ? 'del'
                                     : 'ctx' }, l);
        }));
}

function configFiles(files) {
    var out = {};
    Object.keys(files || {}).forEach(function (k) {
        var f = files[k] || {};
        out[k] = typeof f.body === 'string' ? f.body : JSON.stringify(f.body);
    });
    return out;
}

views.agent = function (r, gen) {
    var uid = r.args[0] || '';
    var head = el('div');
    var conn = el('div', { cls: 'scroll' });
    var desc = el('div', { cls: 'grid2' });
    var health = el('div');
    var configs = el('div');
    var comps = el('div');
    var actionMsg = el('p', { cls: 'msg', role: 'status' });
    var desiredFor = null, desiredFiles = null, desiredError = null;

    var restart = el('button', { id: 'restart', type: 'button' },
                     'Restart agent');
    restart.addEventListener('click', function () {
        restart.disabled = true;
        api('POST', 'agents/' + seg(uid) + '/restart').then(function () {
            note(actionMsg, 'Restart queued: the agent gets it with its '
                 + 'next reply (if it accepts restart commands).', true);
        }, function (e) {
            note(actionMsg, e.message, false);
        }).then(function () { restart.disabled = false; });
    });
    var retry = el('button', { id: 'retry-config', type: 'button' },
                   'Offer the config again');
    retry.addEventListener('click', function () {
        retry.disabled = true;
        api('POST', 'agents/' + seg(uid) + '/retry-config').then(function () {
            note(actionMsg, 'The config is offered to the agent again.',
                 true);
        }, function (e) {
            note(actionMsg, e.message, false);
        }).then(function () { retry.disabled = false; });
    });

    view.appendChild(el('h2', null, 'Agent ',
                        el('span', { cls: 'mono' }, uid)));
    view.appendChild(el('div', { cls: 'row' }, restart, retry,
                        el('a', { href: '#/agents' }, 'back to agents')));
    view.appendChild(actionMsg);
    view.appendChild(head);
    view.appendChild(el('h3', null, 'Connection'));
    view.appendChild(conn);
    view.appendChild(el('h3', null, 'Description'));
    view.appendChild(desc);
    view.appendChild(el('h3', null, 'Health'));
    view.appendChild(health);
    view.appendChild(el('h3', null, 'Configuration'));
    view.appendChild(configs);
    view.appendChild(el('h3', null, 'Available components'));
    view.appendChild(comps);

    /* the config the agent should run: its own or its group's */
    function desired(which) {
        if (which === desiredFor) {
            return Promise.resolve();
        }
        desiredFor = which;
        desiredFiles = null;
        desiredError = null;
        if (!which) {
            return Promise.resolve();
        }
        var path = which === 'agent' ? 'configs/agents/' + seg(uid)
                   : which.indexOf('group:') === 0
                     ? 'configs/groups/' + seg(which.slice(6)) : null;
        if (!path) {
            return Promise.resolve();
        }
        return api('GET', path).then(function (c) {
            desiredFiles = configFiles(c.files);
        }, function (e) {
            desiredError = e.message;
        });
    }

    poll(gen, function () {
        return api('GET', 'agents/' + seg(uid)).then(function (a) {
            return desired(a.desired_config || '').then(function () {
                if (gen !== generation) {
                    return;
                }
                renderAgent(a);
            });
        });
    });

    function renderAgent(a) {
        var rcs = a.remote_config_status || {};
        var status = a.config_status
                     || (rcs.status || '').replace('RemoteConfigStatuses_',
                                                   '');
        var err = a.config_error || rcs.error_message || '';
        replace(head, el('div', { cls: 'row' },
            livePill(a.live), healthPill(a.healthy), statusPill(status),
            a.config_rolled_back ? pill('rolled back to its previous config',
                                        'warn') : null),
            err ? el('p', { cls: 'msg bad', id: 'config-error' },
                     'Config error: ' + err) : null);

        var fields = [['transport', a.transport], ['server', a.server_id],
            ['worker pid', a.worker_pid], ['sequence', a.sequence_num],
            ['capabilities', a.capabilities],
            ['first seen', when(a.first_seen_ms)],
            ['connected since', when(a.connected_at_ms)],
            ['last seen', when(a.last_seen_ms)],
            ['expires', when(a.expires_ms)],
            ['config from', a.desired_config || 'none'],
            ['owed config hash', a.desired_hash],
            ['reported config hash', a.config_hash],
            ['failed config hash', a.failed_hash]];
        replace(conn, el('table', null, el('tbody', null,
            fields.filter(function (f) {
                return f[1] !== undefined && f[1] !== '';
            }).map(function (f) {
                return el('tr', null, el('th', null, f[0]),
                          el('td', { cls: /hash/.test(f[0]) ? 'mono' : '' },
                             String(f[1])));
            }))));

        var d = a.description || {};
        if (!unchanged(desc, d)) {
            replace(desc,
                el('section', null, el('h4', null, 'Identifying attributes'),
                   attrTable(d.identifying_attributes)),
                el('section', null,
                   el('h4', null, 'Non-identifying attributes'),
                   attrTable(d.non_identifying_attributes)));
        }

        if (!unchanged(health, a.health)) {
            replace(health, a.health
                ? el('ul', { cls: 'tree top' },
                     healthTree(a.health, 0, { n: 500 }))
                : el('p', { cls: 'muted' }, 'No health reported.'));
        }

        var eff = configFiles(((a.effective_config || {}).config_map || {})
                              .config_map);
        var names = {};
        Object.keys(eff).forEach(function (k) { names[k] = 1; });
        Object.keys(desiredFiles || {}).forEach(function (k) {
            names[k] = 1;
        });
        var list = Object.keys(names).sort();
        /* one file each side under two names (a collector reports its
         * effective config under its own name): compared all the same */
        var effNames = Object.keys(eff);
        var wantNames = Object.keys(desiredFiles || {});
        var pair = null;
        if (effNames.length === 1 && wantNames.length === 1
            && effNames[0] !== wantNames[0]) {
            pair = [effNames[0], wantNames[0]];
            list = [effNames[0] + ' / ' + wantNames[0]];
        }
        var parts = [];
        if (desiredError) {
            parts.push(el('p', { cls: 'msg bad' }, desiredError));
        } else if (!a.desired_config) {
            parts.push(el('p', { cls: 'muted' },
                          'No remote config is owed to this agent.'));
        }
        if (!list.length) {
            parts.push(el('p', { cls: 'muted' },
                          'No effective config reported.'));
        }
        list.forEach(function (n) {
            var have = pair ? eff[pair[0]] : eff[n];
            var want = pair ? desiredFiles[pair[1]]
                       : desiredFiles ? desiredFiles[n] : undefined;
            var ops = have !== undefined && want !== undefined
                      ? lineDiff(have, want) : null;
            parts.push(el('h4', { cls: 'mono' }, n));
            parts.push(el('div', { cls: 'grid2' },
                el('section', null, el('h5', null, 'Effective (reported)'),
                   have === undefined ? el('p', { cls: 'muted' }, 'absent')
                                      : el('pre', null, have)),
                el('section', null, el('h5', null, 'Desired ('
                                       + (a.desired_config || 'none') + ')'),
                   want === undefined ? el('p', { cls: 'muted' }, 'absent')
                                      : el('pre', null, want))));
            if (have !== undefined && want !== undefined) {
                parts.push(el('h5', null, 'Effective \u2192 desired'));
                parts.push(ops ? diffBlock(ops)
                           : el('p', { cls: 'muted' },
                                'Too large to compare in the browser.'));
            }
        });
        if (!unchanged(configs, [eff, desiredFiles, desiredError,
                                 a.desired_config])) {
            replace.apply(null, [configs].concat(parts));
        }

        var ac = a.available_components;
        if (!unchanged(comps, ac)) {
            replace(comps, ac && ac.components
                ? componentTree(ac.components, 0, { n: 1000 })
                : el('p', { cls: 'muted' }, 'None reported.'));
        }
    }
};

/* --- groups ------------------------------------------------------------ */

views.groups = function (r, gen) {
    var box = el('div', { cls: 'scroll' });
    view.appendChild(el('h2', null, 'Groups'));
    view.appendChild(el('div', { cls: 'row' },
        el('a', { href: '#/group', id: 'new-group' }, 'New group')));
    view.appendChild(box);

    poll(gen, function () {
        return api('GET', 'configs/groups').then(function (res) {
            if (gen !== generation) {
                return;
            }
            var gs = res.groups || [];
            if (!gs.length) {
                replace(box, el('p', { cls: 'muted' }, 'No groups yet.'));
                return;
            }
            replace(box, el('table', null,
                el('thead', null, el('tr', null,
                    el('th', null, 'name'), el('th', null, 'selector'),
                    el('th', { cls: 'num' }, 'priority'),
                    el('th', null, 'files'),
                    el('th', { cls: 'wide-only' }, 'hash'),
                    el('th', { cls: 'wide-only' }, 'updated'))),
                el('tbody', null, gs.map(function (g) {
                    return el('tr', null,
                        el('td', null, el('a', { href: '#/group/'
                                                 + seg(g.name) }, g.name)),
                        el('td', { cls: 'mono' },
                           g.selector || '(every agent)'),
                        el('td', { cls: 'num' }, String(g.priority || 0)),
                        el('td', null, (g.files || []).join(', ')),
                        el('td', { cls: 'wide-only' }, hash(g.config_hash)),
                        el('td', { cls: 'wide-only' }, when(g.updated_ms)));
                }))));
        });
    });
};

views.group = function (r, gen) {
    var name = r.args[0] || '';
    var isNew = !name;
    var msg = el('p', { cls: 'msg', role: 'status', id: 'group-msg' });
    var filesBox = el('div');
    var versions = el('div', { cls: 'scroll' });
    var diffBox = el('div');

    var nameIn = el('input', { name: 'name', id: 'group-name', value: name,
                               required: 'required',
                               pattern: '[A-Za-z0-9._\\-]{1,128}' });
    if (!isNew) {
        nameIn.readOnly = true;
    }
    var selIn = el('input', { name: 'selector', id: 'group-selector',
                              size: 40,
                              placeholder: 'service.name=checkout' });
    var prioIn = el('input', { name: 'priority', id: 'group-priority',
                               type: 'number', value: '0' });
    var noteIn = el('input', { name: 'note', id: 'group-note', size: 40,
                               maxlength: 256 });
    /* a staged rollout of the new files (the rollouts API), optional */
    var stagesIn = el('input', { name: 'stages', id: 'group-stages',
                                 size: 24, placeholder: '1, 10%, 50%, 100%' });
    var soakIn = el('input', { name: 'soak', id: 'group-soak', size: 6,
                               type: 'number', min: 0, placeholder: '0' });

    function fileEditor(fname, body, ctype) {
        var box = el('fieldset', { cls: 'file' });
        var n = el('input', { cls: 'file-name mono', value: fname || '',
                              'aria-label': 'file name' });
        var t = el('input', { cls: 'file-type', value: ctype || '',
                              placeholder: 'text/yaml',
                              'aria-label': 'content type' });
        var b = el('textarea', { cls: 'file-body', spellcheck: 'false',
                                 'aria-label': 'file body' });
        b.value = body || '';
        var rm = el('button', { type: 'button', cls: 'danger' },
                    'Remove file');
        rm.addEventListener('click', function () {
            filesBox.removeChild(box);
        });
        box.appendChild(el('div', { cls: 'row' },
                           el('label', null, 'file', n),
                           el('label', null, 'content type', t), rm));
        box.appendChild(b);
        filesBox.appendChild(box);
    }

    var addFile = el('button', { type: 'button' }, 'Add file');
    addFile.addEventListener('click', function () {
        fileEditor('', '', 'text/yaml');
    });

    var save = el('button', { type: 'submit', cls: 'primary',
                              id: 'group-save' }, 'Save');
    var del = el('button', { type: 'button', cls: 'danger',
                             id: 'group-delete' }, 'Delete group');
    var armed = false;
    del.addEventListener('click', function () {
        if (!armed) {
            armed = true;
            del.textContent = 'Click again to delete ' + name;
            return;
        }
        api('DELETE', 'configs/groups/' + seg(name)).then(function () {
            location.hash = '#/groups';
        }, function (e) {
            note(msg, e.message, false);
        });
    });

    var form = el('form', { id: 'group-form' },
        el('div', { cls: 'row' },
           el('label', null, 'name', nameIn),
           el('label', null, 'selector (key=value, comma between; empty: '
              + 'every agent)', selIn),
           el('label', null, 'priority', prioIn)),
        el('h3', null, 'Files'), filesBox,
        el('div', { cls: 'row' }, addFile),
        isNew ? null : el('div', { cls: 'row' },
            el('label', null, 'roll out in stages (empty: to every agent '
               + 'at once)', stagesIn),
            el('label', null, 'soak s', soakIn)),
        el('div', { cls: 'row' }, el('label', null, 'note for the history',
                                     noteIn), save,
           isNew ? null : del),
        msg);

    form.addEventListener('submit', function (ev) {
        ev.preventDefault();
        var files = {};
        filesBox.querySelectorAll('fieldset.file').forEach(function (fs) {
            var fn = fs.querySelector('.file-name').value.trim();
            if (!fn) {
                return;
            }
            var f = { body: fs.querySelector('.file-body').value };
            var ct = fs.querySelector('.file-type').value.trim();
            if (ct) {
                f.content_type = ct;
            }
            files[fn] = f;
        });
        var gname = nameIn.value.trim();
        if (!gname) {
            note(msg, 'A group needs a name.', false);
            return;
        }
        var prio = parseInt(prioIn.value || '0', 10);
        var body = { selector: selIn.value.trim(),
                     priority: isNaN(prio) ? 0 : prio, files: files };
        var stages = stagesIn.value.split(',').map(function (x) {
            x = x.trim();
            return /^\d+$/.test(x) ? parseInt(x, 10) : x;
        }).filter(function (x) { return x !== ''; });
        if (stages.length) {
            body.rollout = { stages: stages };
            if (soakIn.value !== '') {
                body.rollout.soak_s = parseInt(soakIn.value, 10);
            }
        }
        var headers = noteIn.value ? { 'OpAMP-Note': noteIn.value } : {};
        save.disabled = true;
        api('PUT', 'configs/groups/' + seg(gname), body, headers)
            .then(function (res) {
                note(msg, 'Saved as version ' + res.version + ' (config '
                     + short(res.config_hash) + '): connected agents get '
                     + 'it now, polling agents at their next request.',
                     true);
                dirty = false;
                if (isNew) {
                    location.hash = '#/group/' + seg(gname);
                } else {
                    loadVersions();
                }
            }, function (e) {
                note(msg, e.message, false);
            }).then(function () { save.disabled = false; });
    });

    view.appendChild(el('h2', null, isNew ? 'New group' : 'Group ' + name));
    view.appendChild(el('p', null, el('a', { href: '#/groups' },
                                      'back to groups')));
    view.appendChild(form);

    if (isNew) {
        fileEditor('collector.yaml', '', 'text/yaml');
        return;
    }

    view.appendChild(el('h3', null, 'Agents of this group'));
    var agentsLine = el('p');
    view.appendChild(agentsLine);
    view.appendChild(el('h3', null, 'Rollout'));
    var rolloutBox = el('div', { id: 'group-rollout' });
    view.appendChild(rolloutBox);
    view.appendChild(el('h3', null, 'Versions'));
    view.appendChild(versions);
    view.appendChild(diffBox);

    var base = 'configs/groups/' + seg(name);

    /* the editor holds what the group runs; the operator's edits mark it
     * dirty, and a rollout's end reloads it only when it is not */
    var dirty = false;
    form.addEventListener('input', function () { dirty = true; });

    function loadConfig() {
        return api('GET', base).then(function (c) {
            if (gen !== generation) {
                return;
            }
            clear(filesBox);
            selIn.value = c.selector || '';
            prioIn.value = String(c.priority || 0);
            Object.keys(c.files || {}).sort().forEach(function (k) {
                var f = c.files[k] || {};
                fileEditor(k, typeof f.body === 'string' ? f.body
                              : JSON.stringify(f.body), f.content_type || '');
            });
        }, function (e) {
            if (e.status === 404) {
                note(msg, 'No config for this group (deleted?): saving makes '
                     + 'it.', false);
                fileEditor('collector.yaml', '', 'text/yaml');
            } else {
                showError(e);
            }
        });
    }
    loadConfig();

    /* the group's figures, live: its agents and how many run its config */
    poll(gen, function () {
        return api('GET', 'fleet').then(function (f) {
            var g = f.gauges || {};
            replace(agentsLine, el('span', { id: 'group-figures' },
                String(g['group:' + name] || 0) + ' agents, '
                + String(g['group_failed:' + name] || 0) + ' FAILED, '
                + String(g['group_not_running:' + name] || 0)
                + ' not running this config. '),
                el('a', { href: '#/agents' + query({ group: name }) },
                   'its agents'), ' ',
                el('a', { href: '#/agents' + query({
                    group: name, config_status: 'FAILED' }) },
                   'its FAILED agents'));
        });
    });

    /* its latest rollout, live; a 404 is none (or no rollouts API) */
    var rolloutState = null;
    function loadRollout() {
        return api('GET', 'rollouts/' + seg(name)).then(function (ro) {
            /* the group runs the new files once a rollout is done */
            var was = rolloutState;
            rolloutState = ro.state;
            if ((was === 'running' || was === 'paused')
                && ro.state !== was && ro.state !== 'running'
                && ro.state !== 'paused' && !dirty) {
                loadConfig();
                loadVersions();
            }
            if (!unchanged(rolloutBox, ro)) {
                replace(rolloutBox, rolloutCard(ro, msg, loadRollout));
            }
        }, function (e) {
            if (e.status !== 404) {
                throw e;
            }
            if (!unchanged(rolloutBox, null)) {
                replace(rolloutBox, el('p', { cls: 'muted' },
                                       'No rollout of this group.'));
            }
        });
    }
    poll(gen, loadRollout);

    function loadVersions() {
        return api('GET', base + '/versions?limit=50').then(function (res) {
            var vs = res.versions || [];
            if (!vs.length) {
                replace(versions, el('p', { cls: 'muted' }, 'No history.'));
                return;
            }
            var fromSel = el('select', { id: 'diff-from',
                                         'aria-label': 'from version' });
            var toSel = el('select', { id: 'diff-to',
                                       'aria-label': 'to version' });
            vs.forEach(function (v, i) {
                fromSel.appendChild(el('option', { value: v.version },
                                       'v' + v.version));
                toSel.appendChild(el('option', { value: v.version },
                                     'v' + v.version));
                if (i === 1) {
                    fromSel.value = String(v.version);
                }
            });
            var show = el('button', { type: 'button', id: 'diff-show' },
                          'Compare');
            show.addEventListener('click', function () {
                api('GET', base + '/diff' + query({ from: fromSel.value,
                                                    to: toSel.value }))
                    .then(function (d) {
                        var parts = [el('h3', null, 'v' + fromSel.value
                                        + ' \u2192 v' + toSel.value)];
                        if (d.selector) {
                            parts.push(el('p', null, 'selector: '
                                + d.selector.from + ' \u2192 '
                                + d.selector.to));
                        }
                        if (d.priority) {
                            parts.push(el('p', null, 'priority: '
                                + d.priority.from + ' \u2192 '
                                + d.priority.to));
                        }
                        (d.files || []).forEach(function (f) {
                            parts.push(el('h4', { cls: 'mono' }, f.name
                                          + ' (' + f.change + ')'));
                            parts.push(f.diff === null
                                ? el('p', { cls: 'muted' }, 'not shown: '
                                     + (f.diff_omitted || ''))
                                : unifiedBlock(f.diff || ''));
                        });
                        if (!(d.files || []).length) {
                            parts.push(el('p', { cls: 'muted' },
                                          'No file changed.'));
                        }
                        replace.apply(null, [diffBox].concat(parts));
                    }, function (e) {
                        replace(diffBox, el('p', { cls: 'msg bad' },
                                            e.message));
                    });
            });
            replace(versions, el('div', { cls: 'row' },
                                 el('label', null, 'from', fromSel),
                                 el('label', null, 'to', toSel), show),
                el('table', null,
                    el('thead', null, el('tr', null,
                        el('th', null, 'version'), el('th', null, 'when'),
                        el('th', null, 'author'), el('th', null, 'note'),
                        el('th', { cls: 'wide-only' }, 'hash'),
                        el('th', null, ''))),
                    el('tbody', null, vs.map(function (v) {
                        var rb = el('button', { type: 'button' },
                                    'Roll back to this');
                        rb.addEventListener('click', function () {
                            api('POST', base + '/rollback' + query({
                                version: v.version })).then(function (res) {
                                note(msg, 'Rolled back: version '
                                     + res.version + ' has the files of v'
                                     + v.version + '.', true);
                                loadVersions();
                            }, function (e) {
                                note(msg, e.message, false);
                            });
                        });
                        return el('tr', null,
                            el('td', null, 'v' + v.version
                               + (v.rollback_of ? ' (rollback of v'
                                  + v.rollback_of + ')' : '')),
                            el('td', null, when(v.created_ms)),
                            el('td', null, v.author || ''),
                            el('td', null, v.note || ''),
                            el('td', { cls: 'wide-only' },
                               hash(v.config_hash)),
                            el('td', null, rb));
                    }))));
        }, function (e) {
            replace(versions, el('p', { cls: 'msg bad' }, e.message));
        });
    }

    loadVersions();
};

/* --- rollouts ---------------------------------------------------------- */

var ROLLOUT_ACTIONS = {
    running: ['pause', 'advance', 'abort', 'rollback'],
    paused: ['resume', 'advance', 'abort', 'rollback']
};

/* a gate as the API writes it: a count or a share of the agents */
function gateText(g) {
    if (!g || typeof g !== 'object') {
        return String(g);
    }
    var t = g.max_agents !== undefined ? 'at most ' + g.max_agents
            : g.max_share !== undefined
              ? 'at most ' + Math.round(g.max_share * 1000) / 10 + '%'
            : JSON.stringify(g);
    return g.within_s !== undefined ? t + ' within ' + g.within_s + ' s' : t;
}

function rolloutCard(ro, msg, reload) {
    var c = ro.counts || {};
    var stages = ro.stages || [];
    var actions = ROLLOUT_ACTIONS[ro.state] || [];
    return el('section', { cls: 'rollout', 'data-group': ro.group },
        el('h3', null, el('a', { href: '#/group/' + seg(ro.group) },
                          ro.group), ' ',
           pill(ro.state || '', ro.state === 'done' ? 'ok'
                : ro.state === 'running' ? 'warn'
                : ro.state === 'paused' ? '' : 'bad'),
           ' v' + ro.from_version + ' \u2192 v' + ro.to_version),
        ro.reason ? el('p', { cls: ro.state === 'aborted'
                                   || ro.state === 'rolled_back'
                                   ? 'msg bad' : 'muted' },
                       'why: ' + ro.reason) : null,
        el('ol', { cls: 'stages' }, stages.map(function (s, i) {
            var n = i + 1;
            return el('li', { cls: n < ro.stage ? 'done' : n === ro.stage
                                   ? 'now' : '' },
                      String(s) + (ro.soak_s && ro.soak_s[i]
                                   ? ', soak ' + ro.soak_s[i] + ' s' : ''));
        })),
        el('p', null, 'reached ' + (c.reached || 0) + ', running the new '
           + 'version ' + (c.running || 0) + ', failed ' + (c.failed || 0)
           + ', unhealthy ' + (c.unhealthy || 0) + ', disconnected '
           + (c.disconnected || 0)),
        el('p', { cls: 'muted' }, Object.keys(ro.gates || {}).length
           ? 'gates: ' + Object.keys(ro.gates).map(function (k) {
                 return k + ' ' + gateText(ro.gates[k]);
             }).join('; ') + (ro.on_gate ? '; on a gate: ' + ro.on_gate
                                         : '')
           : 'no gates'),
        actions.length ? el('div', { cls: 'row' }, actions.map(function (a) {
            var b = el('button', { type: 'button', cls: a === 'abort'
                                   || a === 'rollback' ? 'danger' : '',
                                   'data-action': a }, a);
            b.addEventListener('click', function () {
                b.disabled = true;
                api('POST', 'rollouts/' + seg(ro.group) + '/' + a)
                    .then(function (res) {
                        note(msg, ro.group + ': ' + a + ' done, the rollout '
                             + 'is ' + res.state + '.', true);
                        reload();
                    }, function (e) {
                        note(msg, e.message, false);
                    }).then(function () { b.disabled = false; });
            });
            return b;
        })) : null);
}

views.rollouts = function (r, gen) {
    var box = el('div', { id: 'rollouts' });
    var msg = el('p', { cls: 'msg', role: 'status' });
    view.appendChild(el('h2', null, 'Rollouts'));
    view.appendChild(msg);
    view.appendChild(box);
    function load() {
        return api('GET', 'rollouts').then(function (res) {
            if (gen !== generation) {
                return;
            }
            var list = (res && res.rollouts) || [];
            if (unchanged(box, list)) {
                return;
            }
            if (!list.length) {
                replace(box, el('p', { cls: 'muted' },
                    'No rollout is running or paused. A group\'s page '
                    + 'shows its latest one.'));
                return;
            }
            replace.apply(null, [box].concat(list.map(function (ro) {
                return rolloutCard(ro, msg, load);
            })));
        }, function (e) {
            if (e.status === 404) {
                replace(box, el('p', { cls: 'muted', id: 'no-rollouts' },
                    'This server has no rollouts API (GET ' + API
                    + 'rollouts: 404).'));
                return;
            }
            throw e;
        });
    }
    poll(gen, load);
};

/* --- audit log --------------------------------------------------------- */

views.audit = function (r, gen) {
    var p = r.params;
    var box = el('div', { cls: 'scroll' });
    var pager = el('div', { cls: 'row' });
    var targetIn = el('input', { name: 'target', value: p.target || '',
                                 size: 30, placeholder: 'group:checkout' });
    var form = el('form', { cls: 'filters' },
        el('label', null, 'target', targetIn),
        el('button', { type: 'submit' }, 'Filter'));
    form.addEventListener('submit', function (ev) {
        ev.preventDefault();
        location.hash = '#/audit' + query({ target: targetIn.value.trim() });
    });
    view.appendChild(el('h2', null, 'Audit log ',
                        el('span', { cls: 'muted' }, '(newest first)')));
    view.appendChild(form);
    view.appendChild(box);
    view.appendChild(pager);

    poll(gen, function () {
        return api('GET', 'audit' + query({ limit: PAGE, cursor: p.cursor,
                                            target: p.target }))
            .then(function (res) {
                var es = res.entries || [];
                replace(box, es.length ? el('table', null,
                    el('thead', null, el('tr', null,
                        el('th', null, 'when'), el('th', null, 'who'),
                        el('th', null, 'request'), el('th', null, 'status'),
                        el('th', null, 'note or reason'))),
                    el('tbody', null, es.map(function (e) {
                        return el('tr', null,
                            el('td', null, when(e.ms)),
                            el('td', null, e.author || ''),
                            el('td', { cls: 'mono' }, e.method + ' ' + e.path),
                            el('td', null, pill(String(e.status),
                               e.status >= 400 ? 'bad' : 'ok')),
                            el('td', null, e.reason || e.note || ''));
                    }))) : el('p', { cls: 'muted' }, 'No entries.'));
                replace(pager, res.next_cursor
                    ? el('a', { href: '#/audit' + query({
                          target: p.target, cursor: res.next_cursor }) },
                         'Older entries') : null);
            });
    });
};

/* --- keyboard ---------------------------------------------------------- */

document.addEventListener('keydown', function (ev) {
    var t = ev.target;
    if (ev.ctrlKey || ev.metaKey || ev.altKey || (t && (t.tagName === 'INPUT'
        || t.tagName === 'TEXTAREA' || t.tagName === 'SELECT'
        || t.isContentEditable))) {
        return;
    }
    var order = ['summary', 'inventory', 'agents', 'groups', 'rollouts',
                 'audit'];
    var n = parseInt(ev.key, 10);
    if (n >= 1 && n <= order.length) {
        ev.preventDefault();
        location.hash = '#/' + order[n - 1];
    } else if (ev.key === '/') {
        ev.preventDefault();
        if (route && route.name === 'agents') {
            document.getElementById('filter-attr').focus();
        } else {
            location.hash = '#/agents';
        }
    } else if (ev.key === 'r') {
        go();
    }
});

/* a new view takes the focus, so that Tab goes on from its start */
window.addEventListener('hashchange', function () {
    go();
    view.focus({ preventScroll: true });
});

if (!location.hash) {
    history.replaceState(null, '', '#/summary');
}
go();

})();
